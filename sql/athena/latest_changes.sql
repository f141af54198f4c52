-- The orders changed last: within a day of the newest change the lake holds. A lake that
-- stopped receiving changes shows it here first.
-- Runs in Athena (Trino) and through `lakewriter query`.
SELECT order_id, status, updated_at
FROM lakewriter.orders
WHERE updated_at >= (SELECT max(updated_at) FROM lakewriter.orders) - INTERVAL '1' DAY
ORDER BY updated_at DESC, order_id
LIMIT 20
