from tests.conftest import make_show


def test_clone_has_migrations_and_is_private(conn):
    """Each test database is a migrated clone: schema present, no rows from other tests."""
    show = make_show(conn)
    assert conn.execute("select count(*) from core.shows").fetchone()[0] == 1
    assert show is not None
    names = [r[0] for r in conn.execute("select name from trr_assets.schema_migrations order by name")]
    assert names[0] == "0001_supabase_shim" and "0004_show_assets" in names
