package outbox

// WithoutReclaim turns slot truncation off, for the benchmark's candidates
// that keep the outbox in one table.
func WithoutReclaim(o RelayOptions) RelayOptions {
	o.noReclaim = true
	return o
}
