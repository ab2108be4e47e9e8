package main

import "syscall"

// dieWithParent has the kernel kill an instance when the game day dies,
// even by SIGKILL, so no server outlives it.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
