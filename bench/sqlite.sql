-- sqlite.sql: the sqlite3 workload of the allot benchmark suite.
--
-- `allot bench` replaces {{N}} by the size parameter (rows) and runs the
-- script with Debian's sqlite3 on an in-memory database, so the page cache,
-- the parser and the sorter all allocate from the allocator under test.
-- It loads rows of varied text lengths, builds indexes, aggregates, joins,
-- updates, deletes and runs a window query; each result is cross-checked
-- against a second way of computing it, and the last line says
-- "sqlite: ok checksum=..." or "sqlite: FAIL ...".
.bail on
PRAGMA cache_size = -200000;

CREATE TABLE item(id INTEGER PRIMARY KEY, grp INTEGER, val INTEGER,
                  name TEXT, note TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {{N}})
INSERT INTO item
  SELECT x, x % 97, (x * 7919) % 10007,
         printf('item-%08d-%s', x, substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26)),
         printf('%.*c', x % 300, 'n')
  FROM c;

CREATE INDEX item_grp ON item(grp, val);
CREATE INDEX item_name ON item(name);

CREATE TABLE grp_sum AS
  SELECT grp, count(*) AS n, sum(val) AS s, max(length(note)) AS w
  FROM item GROUP BY grp;

CREATE TABLE checks(name TEXT, ok INTEGER, value INTEGER);
INSERT INTO checks
  SELECT 'rows', count(*) = {{N}}, count(*) FROM item;
INSERT INTO checks
  SELECT 'group sums', (SELECT sum(s) FROM grp_sum) = (SELECT sum(val) FROM item),
         (SELECT sum(s) FROM grp_sum);
-- The same join answered through the index and through a full scan.
INSERT INTO checks
  SELECT 'join',
    (SELECT sum(i.val * g.n) FROM item i JOIN grp_sum g ON g.grp = i.grp
       WHERE i.val < 5000)
    = (SELECT sum(i.val * (SELECT count(*) FROM item j WHERE j.grp = i.grp))
       FROM item i NOT INDEXED WHERE i.val < 5000 AND i.id % 50 = 0) +
      (SELECT sum(i.val * g.n) FROM item i JOIN grp_sum g ON g.grp = i.grp
       WHERE i.val < 5000 AND i.id % 50 <> 0),
    0;

-- Churn: rewrite a third of the rows with longer text, drop a fifth.
CREATE TABLE doomed AS SELECT count(*) AS n FROM item WHERE val % 5 = 0;
UPDATE item SET name = name || '-updated-' || grp, note = note || note
  WHERE val % 3 = 0;
DELETE FROM item WHERE val % 5 = 0;
INSERT INTO checks
  SELECT 'delete', count(*) = {{N}} - (SELECT n FROM doomed), count(*) FROM item;
INSERT INTO checks
  SELECT 'update', count(*) = (SELECT count(*) FROM item WHERE val % 3 = 0),
         count(*) FROM item WHERE name LIKE '%-updated-%';

-- Sort by text and a window over groups.
INSERT INTO checks
  SELECT 'window', max(r) = (SELECT max(n) FROM (SELECT count(*) AS n FROM item
                                                  GROUP BY grp)),
         sum(r)
  FROM (SELECT row_number() OVER (PARTITION BY grp ORDER BY name DESC) AS r
        FROM item);
INSERT INTO checks
  SELECT 'distinct', count(DISTINCT substr(name, 15)) > 0,
         count(DISTINCT substr(name, 15)) FROM item;

SELECT CASE WHEN (SELECT min(ok) FROM checks) = 1
  THEN 'sqlite: ok checksum=' || printf('%016x', (SELECT sum(value) FROM checks))
  ELSE 'sqlite: FAIL ' || (SELECT group_concat(name) FROM checks WHERE ok = 0)
END;
