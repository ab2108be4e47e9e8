//go:build !linux

package main

import "syscall"

// dieWithParent: only Linux can tie a child's life to its parent's; on
// other systems the game day stops its instances itself on the way out
// (an interrupt included).
func dieWithParent() *syscall.SysProcAttr { return nil }
