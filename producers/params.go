package producers

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/txpipe/txpipe/domain"
)

// params reads a query string strictly: each parameter at most once, each
// checked, none the route does not know. Every problem is collected, so
// that one 400 names them all.
type params struct {
	q     url.Values
	known map[string]bool
	errs  []domain.FieldError
}

func newParams(r *http.Request) *params {
	return &params{q: r.URL.Query(), known: map[string]bool{}}
}

func (p *params) fail(name, detail string) {
	p.errs = append(p.errs, domain.FieldError{Pointer: "/" + name, Detail: detail})
}

// str returns parameter name ("" when absent); valid checks a present
// value, detail says what it must be.
func (p *params) str(name string, valid func(string) bool, detail string) string {
	p.known[name] = true
	vs, ok := p.q[name]
	switch {
	case !ok:
		return ""
	case len(vs) != 1:
		p.fail(name, "must be given once")
		return ""
	case !valid(vs[0]):
		p.fail(name, detail)
		return ""
	}
	return vs[0]
}

// has reports whether parameter name was given.
func (p *params) has(name string) bool { return p.q.Has(name) }

// time reads an RFC 3339 timestamp.
func (p *params) time(name string) time.Time {
	var t time.Time
	p.str(name, func(s string) bool {
		var err error
		t, err = time.Parse(time.RFC3339Nano, s)
		return err == nil
	}, "must be an RFC 3339 time, such as 2026-11-30T00:00:00Z")
	return t.UTC()
}

// int reads an integer from lo to hi; def when absent.
func (p *params) int(name string, lo, hi, def int64) int64 {
	n := def
	p.str(name, func(s string) bool {
		v, err := strconv.ParseInt(s, 10, 64)
		n = v
		return err == nil && v >= lo && v <= hi
	}, fmt.Sprintf("must be an integer from %d to %d", lo, hi))
	return n
}

// limit reads the page size: 1 to maxPage, defaultPage when absent.
func (p *params) limit() int {
	return int(p.int("limit", 1, maxPage, defaultPage))
}

// maxVersion bounds an account version or entry cursor in a query string:
// far above any real one, and an int64 with room to spare.
const maxVersion = 1 << 62

// Page sizes of the list queries.
const (
	defaultPage = 50
	maxPage     = 1000
)

// ok answers 400 naming every problem, unknown parameters included, and
// returns false; true when the query is valid.
func (p *params) ok(w http.ResponseWriter) bool {
	for name := range p.q {
		if !p.known[name] {
			p.fail(name, "is not a parameter of this route")
		}
	}
	if len(p.errs) == 0 {
		return true
	}
	slices.SortFunc(p.errs, func(x, y domain.FieldError) int { return strings.Compare(x.Pointer, y.Pointer) })
	writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid query", Errors: p.errs})
	return false
}

// validAccountPrefix: a prefix of account ids (the characters of one).
func validAccountPrefix(s string) bool { return domain.ValidAccountID(s) }
