package consumers

// Reading a batch's records before any state is loaded: decoding and
// validating each (a record that is no valid command is kept for the DLQ
// with the reason), and saying what the batch needs loaded. No I/O.

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// batchInput is a batch as read from its records, before any state is loaded.
type batchInput struct {
	msgs []kafka.Message
	// cmds holds the valid commands; nil where a record is not one (invalid
	// says why), and nil altogether when the batch is dead-lettered whole.
	cmds    []*domain.Command
	invalid map[int]deadLetter
	// idents are what can be read of the records that go to the DLQ, so
	// that a decision stored under their command id is loaded too.
	idents []domain.Identity
	// dl, when set, sends every record to the DLQ (isolating a record
	// that cannot be applied).
	dl *deadLetter
	// scopes holds the account patterns of the scoped API keys the records
	// claim, by key id (keys of every account are absent).
	scopes map[string][]string
}

// readBatch decodes msgs, or with dl set only identifies them. A panic
// in the decoder is returned as a *recordPanic naming its record.
func readBatch(msgs []kafka.Message, dl *deadLetter) (batchInput, error) {
	r := batchInput{msgs: msgs, dl: dl}
	if dl == nil {
		var err error
		if r.cmds, r.invalid, err = decodeAll(msgs); err != nil {
			return r, err
		}
	}
	r.idents = identifyDead(msgs, r.cmds)
	return r, nil
}

// loadRequest says what the batch needs read and locked.
func (r batchInput) loadRequest(expected positions) ledger.LoadRequest {
	req := ledger.LoadRequest{Expected: expected}
	for _, id := range r.idents {
		if id.CommandID != "" {
			req.CommandIDs = append(req.CommandIDs, id.CommandID) // a decision wins over a dead-lettering
		}
	}
	for _, c := range r.cmds {
		if c == nil {
			continue
		}
		req.CommandIDs = append(req.CommandIDs, c.CommandID)
		as, ts := domain.Refs(*c)
		req.Accounts = append(req.Accounts, as...)
		req.Transfers = append(req.Transfers, ts...)
		if c.Type == domain.TypeDeposit || c.Type == domain.TypeWithdraw {
			req.Currencies = append(req.Currencies, c.Currency)
		}
		if c.Reference != "" {
			req.References = append(req.References, c.Reference)
		}
		switch c.Type {
		case domain.TypeTransfer, domain.TypeWithdraw:
			req.Payers = append(req.Payers, c.DebitAccount())
		case domain.TypeTransaction:
			for _, l := range c.Legs {
				req.Payers = append(req.Payers, l.FromAccountID)
			}
		}
	}
	return req
}

// recordPanic is a panic recovered while deciding a batch. index is the
// record being decided (in the batch's msgs), or -1 when no one record was.
type recordPanic struct {
	index int
	value any
	stack []byte
}

func (e *recordPanic) Error() string { return fmt.Sprintf("panic while deciding: %v", e.value) }

// guardRecord runs f, the handling of record i, and returns a panic in it as a
// *recordPanic.
func guardRecord(i int, f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &recordPanic{index: i, value: r, stack: debug.Stack()}
		}
	}()
	f()
	return nil
}

// identifyDead reads what it can of each record that will go to the DLQ
// (cmds[i] nil, or every record when cmds is nil: a batch dead-lettered
// whole).
func identifyDead(msgs []kafka.Message, cmds []*domain.Command) []domain.Identity {
	idents := make([]domain.Identity, len(msgs))
	for i, m := range msgs {
		if cmds == nil || cmds[i] == nil {
			// A panic here only loses the identity: the record still
			// goes to the DLQ, without its dead_lettered outcome.
			_ = guardRecord(i, func() { idents[i] = domain.Identify(m.Value) })
		}
	}
	return idents
}

// decodeAll decodes msgs into commands; the records that are not valid
// commands are left nil in cmds and say why in invalid.
func decodeAll(msgs []kafka.Message) (cmds []*domain.Command, invalid map[int]deadLetter, err error) {
	cmds = make([]*domain.Command, len(msgs))
	for i, m := range msgs {
		err := guardRecord(i, func() {
			cmd, err := domain.DecodeCommand(m.Value)
			if err != nil {
				if invalid == nil {
					invalid = make(map[int]deadLetter)
				}
				reason := domain.InvalidFields
				var verr *domain.ValidationError
				if errors.As(err, &verr) && verr.Kind != "" {
					reason = verr.Kind
				}
				invalid[i] = deadLetter{reason: reason, detail: err.Error()}
				return
			}
			cmds[i] = &cmd
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return cmds, invalid, nil
}
