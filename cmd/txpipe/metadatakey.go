package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain/sealing"
)

const metadataKeyUsage = "usage: txpipe metadata-key new --id ID | rotate (with --metadata-keys NEW,OLD…)"

// runMetadataKey serves "txpipe metadata-key new|rotate".
func runMetadataKey(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || (args[0] != "new" && args[0] != "rotate") {
		return usageError{metadataKeyUsage}
	}
	sub := args[0]
	fs := newFlagSet("metadata-key "+sub, e)
	var id string
	if sub == "new" {
		fs.StringVar(&id, "id", "", "the new key's id, e.g. the month it starts sealing: 2026-11")
		if _, err := fs.parse(args[1:], e); err != nil {
			return err
		}
		key, err := sealing.NewKey(id)
		if err != nil {
			return usageError{"--id: " + err.Error()}
		}
		fmt.Fprintln(e.stdout, key)
		return nil
	}
	fs.database()
	fs.logging()
	fs.sealing()
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	rep, err := ledger.ResealMetadata(ctx, pool, cfg.keyring)
	for _, from := range slices.Sorted(maps.Keys(rep.Resealed)) {
		fmt.Fprintf(e.stdout, "re-sealed %d from %s\n", rep.Resealed[from], from)
	}
	for _, from := range slices.Sorted(maps.Keys(rep.Unopened)) {
		fmt.Fprintf(e.stdout, "left %d under %s: add that key to --metadata-keys and run again\n", rep.Unopened[from], from)
	}
	if rep.Behind > 0 {
		fmt.Fprintf(e.stdout, "%d values were sealed under another key meanwhile: put the new key first in every process's --metadata-keys, restart them, and run again\n", rep.Behind)
	}
	if err != nil && !errors.Is(err, ledger.ErrUnopened) && !errors.Is(err, ledger.ErrBehind) {
		return err
	}
	if err == nil {
		fmt.Fprintf(e.stdout, "all metadata is sealed under %s; keys after it may be dropped\n", cfg.keyring.Active())
	}
	return err
}
