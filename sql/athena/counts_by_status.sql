-- Orders and their amount per status: the figures to compare with the source's own report.
-- Runs in Athena (Trino) and through `lakewriter query`.
SELECT status, count(*) AS orders, sum(total_amount) AS amount
FROM lakewriter.orders
GROUP BY status
ORDER BY status
