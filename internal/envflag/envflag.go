// Package envflag gives every flag of a flag.FlagSet an environment variable
// fallback with a mechanical name: --kafka-brokers ⇄ TXPIPE_KAFKA_BROKERS.
// Flags given on the command line win over the environment, and the
// environment wins over the flag's default. A secret can come from a file
// instead, so that it shows neither in `ps` nor in the environment of every
// child: TXPIPE_DATABASE_URL_FILE=/run/secrets/db sets --database-url to the
// file's content (one trailing newline dropped).
package envflag

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Prefix starts every environment variable name.
const Prefix = "TXPIPE_"

// Name returns the environment variable for the flag called name.
func Name(flagName string) string {
	return Prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs, then sets every flag that args did not set from
// the environment variable Name(flag) when lookup finds it. lookup is
// os.LookupEnv in a program and a map in tests.
func Parse(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := lookup(Name(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s: %w", Name(f.Name), e)
			}
			return
		}
		if path, ok := lookup(Name(f.Name) + "_FILE"); ok {
			b, e := os.ReadFile(path)
			if e != nil {
				err = fmt.Errorf("environment variable %s_FILE: %w", Name(f.Name), e)
				return
			}
			v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
			if e := fs.Set(f.Name, v); e != nil {
				// The value may be a secret: never repeat it.
				err = fmt.Errorf("environment variable %s_FILE: the content of %s is not a valid --%s", Name(f.Name), path, f.Name)
			}
		}
	})
	return err
}
