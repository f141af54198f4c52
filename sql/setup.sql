-- Prepares a PostgreSQL database to be replicated by lakewriter. Run it as a superuser (or as
-- the owner of the tables, minus the role creation) in the database to replicate:
--
--   psql -d app -v role=lakewriter -v password='…' -v publication=lakewriter -v schema=public \
--        -f sql/setup.sql
--
-- Every variable has the default shown. It is idempotent: run it again after adding tables.
-- The server also needs wal_level = logical (a restart), and max_replication_slots and
-- max_wal_senders of at least 1 each for lakewriter; `lakewriter doctor` checks all of it.

\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role lakewriter
\endif
\if :{?password}
\else
  \set password ''
\endif
\if :{?publication}
\else
  \set publication lakewriter
\endif
\if :{?schema}
\else
  \set schema public
\endif

-- 1. The replication role, with least privilege: it can log in, stream logical replication
--    (REPLICATION) and read the replicated tables (SELECT, for the initial snapshot and
--    verify), and nothing else: no superuser, no writes, no DDL.
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS create_role \gset
\if :create_role
  CREATE ROLE :"role" LOGIN REPLICATION;
\endif
SELECT :'password' <> '' AS set_password \gset
\if :set_password
  ALTER ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'password';
\endif
SELECT current_database() AS database \gset
GRANT CONNECT ON DATABASE :"database" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"role";
-- tables created later in the schema are readable too
ALTER DEFAULT PRIVILEGES IN SCHEMA :"schema" GRANT SELECT ON TABLES TO :"role";

-- 2. Replica identity: UPDATE and DELETE on a published table without a primary key fail on
--    the primary itself unless the table has a replica identity. Give such tables
--    REPLICA IDENTITY FULL (the old row is logged whole); tables with a primary key keep
--    DEFAULT, which logs the old key, and is all lakewriter needs unless a table is
--    partitioned in the lake on columns outside its key.
SELECT format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', n.nspname, c.relname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :'schema'
  AND c.relkind IN ('r', 'p')
  AND c.relreplident = 'd'
  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
\gexec

-- 3. The publication: every table of the schema, present and future (PostgreSQL 15+), or
--    every table of the database before 15.
SELECT NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') AS create_pub,
       current_setting('server_version_num')::int >= 150000 AS schema_publications \gset
\if :create_pub
  \if :schema_publications
    CREATE PUBLICATION :"publication" FOR TABLES IN SCHEMA :"schema";
  \else
    CREATE PUBLICATION :"publication" FOR ALL TABLES;
  \endif
\endif

SELECT pubname AS publication, schemaname || '.' || tablename AS published_table
FROM pg_publication_tables WHERE pubname = :'publication' ORDER BY 2;
