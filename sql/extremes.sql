-- The extreme values of every type the tests carry: decimals at full precision and scale, NaN
-- and ±Infinity, years 1 and 9999, empty arrays and NULL elements.

CREATE TABLE extremes (
    id int PRIMARY KEY,
    d numeric(38, 10),
    d0 numeric(38, 0),
    d2 numeric(9, 2),
    r real,
    f double precision,
    ts timestamp,
    tstz timestamptz,
    day date,
    a int[],
    t text
);
INSERT INTO extremes VALUES
 (1, 9999999999999999999999999999.9999999999, 99999999999999999999999999999999999999, 9999999.99,
  'NaN', 'Infinity', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '0001-01-01', '{}', ''),
 (2, -9999999999999999999999999999.9999999999, -99999999999999999999999999999999999999, -9999999.99,
  '-Infinity', '-Infinity', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00',
  '9999-12-31', '{NULL,1}', NULL),
 (3, 0.0000000001, 1, 0.01, 0, 'NaN', '2024-02-29 12:00:00', '2024-02-29 12:00:00+00',
  '2024-02-29', NULL, 'x');
