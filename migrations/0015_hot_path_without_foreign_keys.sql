-- The four foreign keys on the write path cost a row lock on the referenced row per inserted row
-- (a WAL record each, and a multixact when many orders of one asset arrive together) and a
-- trigger call per row; what they guarded is guaranteed by cheaper means:
--
-- * orders -> assets and asset_state -> assets: intake inserts an order only where its asset
--   exists (`WHERE EXISTS (SELECT 1 FROM assets …)` in the same statement), and the sequencer
--   writes a state only for an asset it read; an asset row is never deleted (the trigger below
--   refuses it), so no reference can dangle later.
-- * intake_queue -> orders and decisions -> orders: intake writes the order and its queue entry
--   in one statement; the sequencer decides only orders it read from the queue, and an order is
--   never deleted (`orders_append_only`).
ALTER TABLE orders DROP CONSTRAINT orders_chain_asset_fkey;
ALTER TABLE asset_state DROP CONSTRAINT asset_state_chain_asset_fkey;
ALTER TABLE intake_queue DROP CONSTRAINT intake_queue_order_id_fkey;
ALTER TABLE decisions DROP CONSTRAINT decisions_order_id_fkey;

CREATE FUNCTION refuse_asset_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a registered asset is never removed: orders and decisions refer to it'
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER assets_no_delete BEFORE DELETE ON assets
    FOR EACH ROW EXECUTE FUNCTION refuse_asset_removal();
CREATE TRIGGER assets_no_truncate BEFORE TRUNCATE ON assets
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_asset_removal();
