-- Two costs on every order's intake that guard nothing.
--
-- `intake_queue_by_asset` served only the sequencer's rare fetch of a whole conflict window (a
-- burst past the fetch limit inside one window: `storage::fetch_window`). The queue holds only
-- undecided orders, so that fetch reads the arrival index up to the window's end and keeps the
-- window's asset. One index entry fewer per order.
DROP INDEX intake_queue_by_asset;

-- An order's body is stored as `json` (its text, checked on the insert) rather than `jsonb`:
-- nothing queries inside it on the write path, and the sequencer reads it back as text for
-- every order it fetches, which `jsonb` must rebuild from its binary form. The idempotency
-- check compares the request's hash, never the body. Rewrites the table once.
ALTER TABLE orders ALTER COLUMN body TYPE json USING body::json;
