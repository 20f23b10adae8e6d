-- The queue's own primary key was a third index entry per order on the write path, and guarded
-- nothing the `orders` key does not: a queue entry is inserted only by the statement that
-- inserts its order. The sequencer deletes decided entries by (intake_at, order_id), the key of
-- the arrival index it reads them by.
ALTER TABLE intake_queue DROP CONSTRAINT intake_queue_pkey;
