-- PostgreSQL checks an IN list by comparing, so its constraints stay as version 1
-- wrote them; this version exists so that both backends number their schemas
-- alike. See 0002_check_lists_as_comparisons.sqlite.sql.
SELECT 1;
