-- Indexes for the audit query API (SPEC §5): each common filter walks its own index in seq
-- order, so a page of matches costs the same however rare they are. (By target and by chain:
-- decisions_by_asset and decisions_by_chain, from 0001. Sequence ranges: the primary key.)
CREATE INDEX decisions_by_issuer ON decisions (issuer, seq);
CREATE INDEX decisions_by_outcome ON decisions (outcome, seq);
CREATE INDEX decisions_by_kind ON decisions (kind, seq);
CREATE INDEX decisions_by_time ON decisions (decided_at, seq);
-- "Which decisions did policy P determine?": the record's list, as jsonb, in a GIN index.
CREATE INDEX decisions_by_policy ON decisions USING gin (((record::jsonb) -> 'determining_policies'));
