-- The current state of the sample orders table, as the lake holds it: one row per order.
-- Runs in Athena (Trino) and through `lakewriter query --config F "$(cat sql/athena/current_state.sql)"`.
-- `lakewriter` is the default namespace (`[sink] namespace`, the Glue database).
SELECT order_id, customer_id, order_date, total_amount, status
FROM lakewriter.orders
ORDER BY order_id
LIMIT 100
