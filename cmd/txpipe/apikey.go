package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/txpipe/txpipe/producers/apikey"
)

// runAPIKey serves "txpipe apikey create|list|revoke".
func runAPIKey(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "list" && args[0] != "revoke") {
		return usageError{"usage: txpipe apikey create --name NAME --scopes commands:write,ledger:read [--accounts 'PATTERN,…'] | list | revoke --id KEY_ID"}
	}
	sub := args[0]
	fs := newFlagSet("apikey "+sub, e)
	fs.database()
	fs.logging()
	var name, scopes, accounts, id string
	var accountsSet bool
	switch sub {
	case "create":
		fs.StringVar(&name, "name", "", "what the key is for (who uses it)")
		fs.StringVar(&scopes, "scopes", "", "comma-separated: "+strings.Join(apikey.Scopes, ","))
		fs.Func("accounts", "comma-separated account patterns the key is limited to (an account id, or a prefix followed by *); not given: every account", func(v string) error {
			accounts, accountsSet = v, true
			return nil
		})
	case "revoke":
		fs.StringVar(&id, "id", "", "the key id (apikey list shows it)")
	}
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch sub {
	case "create":
		var list []string
		for _, s := range strings.Split(scopes, ",") {
			if s = strings.TrimSpace(s); s != "" {
				list = append(list, s)
			}
		}
		var patterns []string
		for _, p := range strings.Split(accounts, ",") {
			if p = strings.TrimSpace(p); p != "" {
				patterns = append(patterns, p)
			}
		}
		if accountsSet && len(patterns) == 0 {
			// An empty variable in a script must not make a key of every account.
			return usageError{"--accounts names no pattern: give at least one, or leave the flag out for a key of every account"}
		}
		token, keyID, err := apikey.CreateScoped(ctx, pool, name, list, patterns)
		if err != nil {
			return usageError{err.Error()}
		}
		fmt.Fprintf(e.stdout, "key id: %s\napi key: %s\nThe key is shown only now; only a hash of it is stored.\n", keyID, token)
	case "list":
		keys, err := apikey.List(ctx, pool)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY ID\tNAME\tSCOPES\tACCOUNTS\tCREATED\tLAST USED\tREVOKED")
		at := func(t *time.Time) string {
			if t == nil {
				return "-"
			}
			return t.UTC().Format(time.RFC3339)
		}
		for _, k := range keys {
			accts := "*"
			if k.Accounts != nil {
				accts = strings.Join(k.Accounts, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.KeyID, k.Name, strings.Join(k.Scopes, ","), accts, at(&k.CreatedAt), at(k.LastUsedAt), at(k.RevokedAt))
		}
		return tw.Flush()
	case "revoke":
		if !apikey.ValidID(id) {
			return usageError{"--id must be a key id (16 hex digits, as apikey list shows)"}
		}
		if err := apikey.Revoke(ctx, pool, id); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "revoked %s (ingest stops accepting it within %s; an ingest that cannot read PostgreSQL meanwhile, within %s)\n",
			id, apikey.CacheTTL, apikey.StaleGrace)
	}
	return nil
}
