"""asyncpg through pgwarden (or straight to Postgres): type introspection of arrays, enums
and composites, with the statement cache reused and two connections at once.

Usage: python3 asyncpg_check.py PORT USER DATABASE

Run by tests/drivers.rs. The database must have `CREATE TYPE mood AS ENUM ('sad', 'ok',
'happy')` and `CREATE TYPE pair AS (a int, b text)`. Prints "ok" and exits 0 when every
check holds; otherwise prints what failed and exits 1. Every step has a deadline, so a proxy
that stops answering fails the check instead of hanging it.
"""

import asyncio
import sys

import asyncpg

DEADLINE = 15


async def checks(conn, tag):
    row = await conn.fetchrow("SELECT $1::int[]", [1, None])
    assert list(row[0]) == [1, None], row
    # The same statement again: asyncpg's cache, no second introspection.
    row = await conn.fetchrow("SELECT $1::int[]", [2, 3])
    assert list(row[0]) == [2, 3], row
    assert await conn.fetchval("SELECT $1::int[][]", [[1, 2], [3, 4]]) == [[1, 2], [3, 4]]
    assert await conn.fetchval("SELECT $1::text[]", ["a", None, tag]) == ["a", None, tag]
    assert await conn.fetchval("SELECT $1::mood", "happy") == "happy"
    assert await conn.fetchval("SELECT $1::mood[]", ["sad", "ok"]) == ["sad", "ok"]
    pair = await conn.fetchval("SELECT $1::pair", (7, tag))
    assert (pair["a"], pair["b"]) == (7, tag), pair
    pairs = await conn.fetchval("SELECT ARRAY[ROW(1, 'x')::pair, ROW(2, NULL)::pair]")
    assert [(p["a"], p["b"]) for p in pairs] == [(1, "x"), (2, None)], pairs
    rows = await conn.fetch("SELECT g, $1::text FROM generate_series(1, 3) g", tag)
    assert [(r[0], r[1]) for r in rows] == [(1, tag), (2, tag), (3, tag)], rows
    async with conn.transaction():
        assert await conn.fetchval("SELECT $1::bigint + 1", 41) == 42


async def main(port, user, database):
    async def one(tag):
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user=user, database=database, ssl=False, timeout=10
        )
        try:
            await checks(conn, tag)
        except BaseException:
            # No polite close: it would wait for a proxy that may not answer.
            conn.terminate()
            raise
        await conn.close(timeout=5)

    await asyncio.wait_for(asyncio.gather(one("first"), one("second")), DEADLINE)


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
    except BaseException as e:  # noqa: BLE001 - report anything, including a timeout
        print(f"asyncpg check failed: {type(e).__name__}: {e!r}")
        sys.exit(1)
    print("ok")
