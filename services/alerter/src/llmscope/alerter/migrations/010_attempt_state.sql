-- A delivery attempt is written as 'in_flight' (committed) before the channel is called, so a
-- process killed mid-send leaves a trace; whoever takes the claim over marks it 'interrupted'.
ALTER TABLE alerter_delivery_attempts
    ADD COLUMN state text NOT NULL DEFAULT 'done' CHECK (state IN ('in_flight', 'done', 'interrupted'));
