-- Core migration 13: append-only history (txs, transitions, tx_spends).
-- The ledger of what a key signed, the audit trail and the spend record are evidence: no
-- row is ever deleted, and the columns that say what was signed, and why, never change. A
-- fee bump re-reads to_address, calldata and value_wei, and a rewritten one would redirect
-- the payment. Status, errors, blocks, holds and times are still updated in place (through
-- shared/state for the status). Anyone who can write the file can drop these triggers too:
-- they stop mistakes and careless tools, the file's mode (0600) stops the others.
CREATE TRIGGER IF NOT EXISTS trg_txs_no_delete BEFORE DELETE ON txs
BEGIN
    SELECT RAISE(ABORT, 'txs is append-only: a signed transaction is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_txs_history_frozen
BEFORE UPDATE OF purpose, subject, version, fingerprint, sender, nonce, tx_hash, raw_tx, to_address, value_wei, calldata, gas_limit, max_fee_per_gas, max_priority_fee_per_gas, gas_price, replaces_tx_id, created_at, idempotency_key ON txs
WHEN OLD.purpose IS NOT NEW.purpose OR OLD.subject IS NOT NEW.subject
  OR OLD.version IS NOT NEW.version OR OLD.fingerprint IS NOT NEW.fingerprint
  OR OLD.sender IS NOT NEW.sender OR OLD.nonce IS NOT NEW.nonce
  OR OLD.tx_hash IS NOT NEW.tx_hash OR OLD.raw_tx IS NOT NEW.raw_tx
  OR OLD.to_address IS NOT NEW.to_address OR OLD.value_wei IS NOT NEW.value_wei
  OR OLD.calldata IS NOT NEW.calldata OR OLD.gas_limit IS NOT NEW.gas_limit
  OR OLD.max_fee_per_gas IS NOT NEW.max_fee_per_gas
  OR OLD.max_priority_fee_per_gas IS NOT NEW.max_priority_fee_per_gas
  OR OLD.gas_price IS NOT NEW.gas_price OR OLD.replaces_tx_id IS NOT NEW.replaces_tx_id
  OR OLD.created_at IS NOT NEW.created_at OR OLD.idempotency_key IS NOT NEW.idempotency_key
BEGIN
    SELECT RAISE(ABORT, 'txs history columns never change (what was signed, for what, when)');
END;
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_delete BEFORE DELETE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row is never deleted');
END;
CREATE TRIGGER IF NOT EXISTS trg_transitions_no_update BEFORE UPDATE ON transitions
BEGIN
    SELECT RAISE(ABORT, 'transitions is append-only: an audit row never changes');
END;
CREATE TRIGGER IF NOT EXISTS trg_tx_spends_no_delete BEFORE DELETE ON tx_spends
BEGIN
    SELECT RAISE(ABORT, 'tx_spends is append-only: deleting a spend would lift the daily cap');
END;
CREATE TRIGGER IF NOT EXISTS trg_tx_spends_no_update BEFORE UPDATE ON tx_spends
BEGIN
    SELECT RAISE(ABORT, 'tx_spends is append-only: a recorded spend never changes');
END;
