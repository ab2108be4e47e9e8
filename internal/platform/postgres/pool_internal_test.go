package postgres

import (
	"testing"

	"github.com/lib/pq"
)

func TestMultiHostURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@pg-a:5432/db?sslmode=disable": "postgres://u:p@pg-a:5432/db?sslmode=disable",
		"host=pg-a,pg-b port=5432,5433 dbname=db":     "host=pg-a,pg-b port=5432,5433 dbname=db",
		"postgres://u:p@pg-a:5432,pg-b:5433/db?sslmode=disable": "host='pg-a,pg-b' port='5432,5433' user='u' password='p' dbname='db' " +
			"connect_timeout='2' sslmode='disable'",
		"postgresql://pg-a,pg-b:5433/db":                                          "host='pg-a,pg-b' port='5432,5433' dbname='db' connect_timeout='2'",
		"postgresql://pg-a,pg-b:5433/db?port=6000":                                "host='pg-a,pg-b' port='6000,5433' dbname='db' connect_timeout='2'",
		"postgres://u@[::1]:5432,pg-b:5432/db":                                    "host='::1,pg-b' port='5432,5432' user='u' dbname='db' connect_timeout='2'",
		"postgres://u@pg-a,pg-b/db?port=5433":                                     "host='pg-a,pg-b' user='u' dbname='db' connect_timeout='2' port='5433'",
		`postgres://u:it%27s%5C@a:1,b:2/db`:                                       `host='a,b' port='1,2' user='u' password='it\'s\\' dbname='db' connect_timeout='2'`,
		"postgres://a:1,b:2/db?connect_timeout=5&target_session_attrs=read-write": "host='a,b' port='1,2' dbname='db' connect_timeout='5' target_session_attrs='read-write'",
	} {
		got := multiHostURL(in)
		if got != want {
			t.Errorf("multiHostURL(%q)\n got %q\nwant %q", in, got, want)
		}
		if _, err := pq.NewConfig(got); err != nil {
			t.Errorf("lib/pq refuses multiHostURL(%q) = %q: %v", in, got, err)
		}
	}
}
