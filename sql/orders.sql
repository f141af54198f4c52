-- The sample schema: an `orders` table of seven columns, seeded with :rows rows (default 10000).
--
--   psql -d app -v rows=100000 -f sql/orders.sql
--
-- Deterministic (setseed), so two runs hold the same rows.

\set ON_ERROR_STOP on
\if :{?rows}
\else
  \set rows 10000
\endif

CREATE TABLE IF NOT EXISTS public.orders (
    order_id     serial PRIMARY KEY,
    customer_id  integer        NOT NULL,
    order_date   date           NOT NULL,
    total_amount numeric(10, 2) NOT NULL,
    status       text           NOT NULL,
    created_at   timestamptz    NOT NULL DEFAULT now(),
    updated_at   timestamptz    NOT NULL DEFAULT now()
);

SELECT setseed(0.42) \gset
INSERT INTO public.orders (customer_id, order_date, total_amount, status, created_at, updated_at)
SELECT 1 + (random() * 9999)::int,
       date '2024-01-01' + (random() * 365)::int,
       round((random() * 1000)::numeric, 2),
       (ARRAY['pending', 'paid', 'shipped', 'delivered', 'cancelled'])[1 + (random() * 4)::int],
       timestamptz '2024-01-01 00:00:00+00' + random() * interval '365 days',
       timestamptz '2024-01-01 00:00:00+00' + random() * interval '365 days'
FROM generate_series(1, :rows);
