-- One row per attempt, even when the worker dies during it: the worker writes the attempt as
-- `in_flight` before it sends the request, and its outcome after. A worker killed in between
-- (or before it saved a batch of deliveries) leaves `in_flight` rows: sent, outcome unknown;
-- its successor's resends are rows of their own.
ALTER TABLE webhook_attempts DROP CONSTRAINT webhook_attempts_outcome_check;
ALTER TABLE webhook_attempts ADD CONSTRAINT webhook_attempts_outcome_check
    CHECK (outcome IN ('in_flight', 'delivered', 'failed', 'exhausted', 'gone'));
