package producers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/producers/apikey"
)

// MaxBatchCommands is the most commands one batch request may carry.
const MaxBatchCommands = 1000

type acceptedResponse struct {
	CommandID string `json:"command_id"`
	Status    string `json:"status"`
}

func (a *API) postCommand(w http.ResponseWriter, r *http.Request) {
	body, ok := a.readBody(w, r, domain.MaxCommandBytes)
	if !ok {
		return
	}
	cmd, err := domain.DecodeCommand(body)
	if err != nil {
		a.invalid(w, err, "")
		return
	}
	if !a.inScope(w, r, []domain.Command{cmd}, "") {
		return
	}
	if !a.allow(w, r, 1) {
		return
	}
	if _, err := a.send(r, []domain.Command{cmd}); err != nil {
		a.unavailable(w, err)
		return
	}
	w.Header().Set("Location", "/v1/commands/"+cmd.CommandID)
	writeJSON(w, http.StatusAccepted, acceptedResponse{CommandID: cmd.CommandID, Status: "accepted"})
}

type batchRequest struct {
	Commands []json.RawMessage `json:"commands"`
}

type batchItem struct {
	CommandID string `json:"command_id"`
	Status    string `json:"status"` // accepted | failed
	Detail    string `json:"detail,omitempty"`
}

// postBatch validates every command before producing any: one invalid
// command refuses the whole batch with 400 and the errors of every item, so
// a batch is never half accepted for a client mistake. A partial Kafka
// failure answers 503 with the per-item results; retrying the whole batch is
// safe because command_ids make it idempotent.
func (a *API) postBatch(w http.ResponseWriter, r *http.Request) {
	body, ok := a.readBody(w, r, a.opts.MaxBodyBytes)
	if !ok {
		return
	}
	var req batchRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Commands == nil || !atEOF(dec) {
		a.metrics.rejects.WithLabelValues("invalid_batch").Inc()
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid batch",
			Detail: `the body must be one JSON object {"commands": [ ... ]} and nothing else`})
		return
	}
	if len(req.Commands) == 0 || len(req.Commands) > MaxBatchCommands {
		a.metrics.rejects.WithLabelValues("batch_size").Inc()
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid batch",
			Detail: fmt.Sprintf("a batch holds 1 to %d commands, this one %d", MaxBatchCommands, len(req.Commands)),
			Errors: []domain.FieldError{{Pointer: "/commands", Detail: "must hold 1 to 1000 commands"}}})
		return
	}
	cmds := make([]domain.Command, len(req.Commands))
	verr := &domain.ValidationError{}
	for i, raw := range req.Commands {
		cmd, err := domain.DecodeCommand(raw)
		var ve *domain.ValidationError
		if errors.As(err, &ve) {
			for _, fe := range ve.Errors {
				verr.Errors = append(verr.Errors, domain.FieldError{Pointer: "/commands/" + strconv.Itoa(i) + fe.Pointer, Detail: fe.Detail})
			}
			continue
		}
		cmds[i] = cmd
	}
	if len(verr.Errors) > 0 {
		a.invalid(w, verr, "no command of this batch was accepted")
		return
	}
	if !a.inScope(w, r, cmds, "/commands/") {
		return
	}
	if !a.allow(w, r, len(cmds)) {
		return
	}
	errs, err := a.send(r, cmds)
	items := make([]batchItem, len(cmds))
	for i, c := range cmds {
		items[i] = batchItem{CommandID: c.CommandID, Status: "accepted"}
		if errs[i] != nil {
			items[i] = batchItem{CommandID: c.CommandID, Status: "failed", Detail: "not stored in Kafka; retry with the same command_id"}
		}
	}
	if err != nil {
		a.opts.Log.Warn("batch produce failed", "err", err, "commands", len(cmds))
		w.Header().Set("Retry-After", "1")
		writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Commands not stored",
			Detail:  "some or all commands could not be stored; retry the failed ones (or the batch) with the same command_ids",
			Results: items})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"results": items})
}

// atEOF reports whether dec has nothing left but white space.
func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
}

// readBody reads at most limit bytes; a larger body is refused with 413.
// The Content-Type is not checked: the body must parse as JSON whatever a
// client labels it (curl -d sends a form type), and a strict parser is the
// real gate.
func (a *API) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	a.metrics.payloadBytes.Observe(float64(len(body)))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		a.metrics.rejects.WithLabelValues("too_large").Inc()
		writeProblem(w, problem{Status: http.StatusRequestEntityTooLarge, Type: "too-large", Title: "Request body too large",
			Detail: fmt.Sprintf("the body may be at most %d bytes", limit)})
		return nil, false
	}
	if err != nil {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Unreadable body",
			Detail: "the request body could not be read"})
		return nil, false
	}
	return body, true
}

func (a *API) invalid(w http.ResponseWriter, err error, detail string) {
	var verr *domain.ValidationError
	if !errors.As(err, &verr) {
		verr = &domain.ValidationError{Errors: []domain.FieldError{{Detail: "invalid command"}}}
	}
	a.metrics.rejects.WithLabelValues("invalid_command").Inc()
	if detail == "" {
		detail = "the command was not accepted; fix the fields listed in errors"
	}
	writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-command", Title: "Invalid command",
		Detail: detail, Errors: verr.Errors})
}

// allow spends n commands of the caller's rate limit, or answers 429 with
// Retry-After.
func (a *API) allow(w http.ResponseWriter, r *http.Request, n int) bool {
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	ok, wait := a.limiter.take(id.KeyID, n, time.Now())
	if ok {
		return true
	}
	a.metrics.rejects.WithLabelValues("rate_limited").Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	writeProblem(w, problem{Status: http.StatusTooManyRequests, Type: "rate-limited", Title: "Too many commands",
		Detail: fmt.Sprintf("this API key may send %g commands a second (bursts of %d); retry after the time in Retry-After", a.opts.RateLimit, a.opts.RateBurst)})
	return false
}

// inScope refuses with 403, naming each command (prefix + its index, for
// a batch), when the request's key is scoped to accounts and any of cmds
// moves money from an account outside its scope: the whole request, so that
// a batch is never half accepted.
func (a *API) inScope(w http.ResponseWriter, r *http.Request, cmds []domain.Command, prefix string) bool {
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	if id.Accounts == nil {
		return true
	}
	var errs []domain.FieldError
	for i, c := range cmds {
		for _, acct := range c.DebitAccounts() {
			if !id.Covers(acct) {
				p := ""
				if prefix != "" {
					p = prefix + strconv.Itoa(i)
				}
				errs = append(errs, domain.FieldError{Pointer: p, Detail: fmt.Sprintf("this key may not move money from account %q", acct)})
				break
			}
		}
	}
	if len(errs) == 0 {
		return true
	}
	a.metrics.rejects.WithLabelValues("forbidden").Inc()
	writeProblem(w, problem{Status: http.StatusForbidden, Type: "forbidden", Title: "Account outside the key's scope",
		Detail: "the key is limited to some accounts; nothing of this request was accepted", Errors: errs})
	return false
}

func (a *API) send(r *http.Request, cmds []domain.Command) ([]error, error) {
	ctx, cancel := contextWithTimeout(r, a.opts.ProduceTimeout)
	defer cancel()
	start := time.Now()
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	errs, err := a.opts.Producer.Send(ctx, cmds, id.KeyID)
	a.metrics.produceDuration.Observe(time.Since(start).Seconds())
	if err == nil {
		a.metrics.commands.Add(float64(len(cmds)))
	}
	return errs, err
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.opts.Log.Warn("produce failed", "err", err)
	w.Header().Set("Retry-After", "1")
	writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Command not stored",
		Detail: "the command could not be stored durably; retry with the same command_id"})
}
