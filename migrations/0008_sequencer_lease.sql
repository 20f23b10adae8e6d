-- The sequencer leader's lease. The advisory lock says who leads; the lease says whether it
-- still makes progress. A leader frozen (SIGSTOP, a stalled VM) keeps its lock, because its
-- connection stays open: so the leader renews `renewed_at` (the database's clock) as it goes,
-- and a standby that finds the lease older than its time-to-live terminates the backend that
-- holds the lock (`backend_pid`), which releases it. The head's compare-and-set in the
-- leader's epoch still keeps a woken leader from writing.
CREATE TABLE sequencer_lease (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch       bigint      NOT NULL,
    backend_pid integer     NOT NULL,
    renewed_at  timestamptz NOT NULL
);
