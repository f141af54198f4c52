-- A workload on the sample `orders` table: every kind of change lakewriter must carry, in
-- transactions of different sizes. Run it after sql/orders.sql, as often as you like:
--
--   psql -d app -v rounds=10 -f sql/workload.sql
--
-- Each round commits: a batch of inserts; status updates; amount updates; a key change
-- (order_id rewritten); deletes of cancelled orders; and one transaction that inserts, updates
-- and deletes the same rows (the lake must end with their final state only).

\set ON_ERROR_STOP on
\if :{?rounds}
\else
  \set rounds 5
\endif
\if :{?batch}
\else
  \set batch 1000
\endif

SELECT setseed(0.7) \gset

-- One statement per row, run in order by \gexec: each statement is its own transaction, except
-- the BEGIN … COMMIT groups.
SELECT format(step.sql, :batch, round_no % 17)
FROM generate_series(1, :rounds) AS round_no
CROSS JOIN (VALUES
  (1, $q$BEGIN$q$),
  (2, $q$INSERT INTO public.orders (customer_id, order_date, total_amount, status)
         SELECT 1 + (random() * 9999)::int, date '2025-01-01' + (random() * 30)::int,
                round((random() * 1000)::numeric, 2), 'pending'
         FROM generate_series(1, %1$s)$q$),
  (3, $q$COMMIT$q$),
  (4, $q$UPDATE public.orders SET status = 'paid', updated_at = now()
         WHERE order_id IN (SELECT order_id FROM public.orders WHERE status = 'pending'
                            ORDER BY order_id LIMIT %1$s / 4)$q$),
  (5, $q$UPDATE public.orders SET total_amount = total_amount + 1.25, updated_at = now()
         WHERE order_id %% 17 = %2$s$q$),
  (6, $q$UPDATE public.orders SET order_id = order_id + 10000000
         WHERE order_id = (SELECT min(order_id) FROM public.orders
                           WHERE order_id > 0 AND order_id < 10000000)$q$),
  (7, $q$DELETE FROM public.orders
         WHERE order_id IN (SELECT order_id FROM public.orders WHERE status = 'cancelled'
                            ORDER BY order_id LIMIT %1$s / 10)$q$),
  (8, $q$BEGIN$q$),
  -- a fresh negative key each time, so the script can run again on the same table
  (9, $q$SELECT set_config('lakewriter.workload_key',
         (coalesce(-min(order_id), 0) + 1)::text, true)
         FROM public.orders WHERE order_id < 0 AND order_id > -1000000$q$),
  (10, $q$INSERT INTO public.orders (order_id, customer_id, order_date, total_amount, status)
         VALUES (-current_setting('lakewriter.workload_key')::int, 1, date '2025-02-01', 10.00, 'pending'),
                (-current_setting('lakewriter.workload_key')::int - 1000000, 2, date '2025-02-01', 20.00, 'pending')$q$),
  (11, $q$UPDATE public.orders SET status = 'paid'
          WHERE order_id = -current_setting('lakewriter.workload_key')::int$q$),
  (12, $q$DELETE FROM public.orders
          WHERE order_id = -current_setting('lakewriter.workload_key')::int - 1000000$q$),
  (13, $q$COMMIT$q$)
) AS step(n, sql)
ORDER BY round_no, step.n
\gexec
