-- Ingest writes one deliveries row per recipient; two costs of that insert are dropped.
-- * The foreign key from deliveries to notifications: PostgreSQL checks it row by row (a lookup in
--   notifications_pkey through the referential-integrity trigger), 4.4 of 11.8 us of PostgreSQL CPU per
--   delivery row (1,000-recipient notifications, measured in isolation). A delivery is only ever inserted by
--   the statement that inserts its notification (store/ingest.py), and retention deletes a notification's
--   deliveries before the notification itself (store/retention.py): nothing relied on the check or on
--   its ON DELETE CASCADE.
-- * user_seqs rows are rewritten by every notification to that user; room on each page keeps those
--   rewrites HOT (no new index entry), as 006 did for deliveries.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_notification_id_fkey;
ALTER TABLE user_seqs SET (fillfactor = 50);
