package postgres

import "testing"

func TestMultiHostURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@pg-a:5432/db?sslmode=disable":           "postgres://u:p@pg-a:5432/db?sslmode=disable",
		"host=pg-a,pg-b port=5432,5433 dbname=db":               "host=pg-a,pg-b port=5432,5433 dbname=db",
		"postgres://u:p@pg-a:5432,pg-b:5433/db?sslmode=disable": "host='pg-a,pg-b' port='5432,5433' user='u' password='p' dbname='db' sslmode='disable'",
		"postgresql://pg-a,pg-b:5433/db":                        "host='pg-a,pg-b' port=',5433' dbname='db'",
		"postgres://u@[::1]:5432,pg-b:5432/db":                  "host='::1,pg-b' port='5432,5432' user='u' dbname='db'",
		"postgres://u@pg-a,pg-b/db?port=5433":                   "host='pg-a,pg-b' user='u' dbname='db' port='5433'",
		`postgres://u:it%27s%5C@a:1,b:2/db`:                     `host='a,b' port='1,2' user='u' password='it\'s\\' dbname='db'`,
		"postgres://a:1,b:2/db?target_session_attrs=read-write": "host='a,b' port='1,2' dbname='db' target_session_attrs='read-write'",
	} {
		if got := multiHostURL(in); got != want {
			t.Errorf("multiHostURL(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}
