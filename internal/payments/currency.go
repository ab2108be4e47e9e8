package payments

import "strings"

// iso4217 lists the active ISO 4217 currency codes (list one, 2024), lower
// case. Fund codes and precious metals (XAU, XDR, …) are left out: nobody
// pays for an order in them.
const iso4217 = `aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob
brl bsd btn bwp byn bzd cad cdf chf clp cny cop crc cuc cup cve czk djf dkk dop
dzd egp ern etb eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr
ils inr iqd irr isk jmd jod jpy kes kgs khr kmf kpw krw kwd kyd kzt lak lbp lkr
lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr mwk mxn myr mzn nad ngn nio
nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sdg
sek sgd shp sle sll sos srd ssp stn svc syp szl thb tjs tmt tnd top try ttd twd
tzs uah ugx usd uyu uzs ves vnd vuv wst xaf xcd xcg xof xpf yer zar zmw zwg zwl`

// currencies is iso4217 as a set. It is built once and never written.
var currencies = func() map[string]bool {
	set := map[string]bool{}
	for _, code := range strings.Fields(iso4217) {
		set[code] = true
	}
	return set
}()

// isCurrency reports whether code (lower case) is an active ISO 4217 code.
func isCurrency(code string) bool { return currencies[code] }
