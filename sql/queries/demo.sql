-- Named queries of the embedded demo (trr_assets/demo.py).

-- name: demo_create_show
insert into core.shows (title) values (%(title)s) returning id

-- name: demo_asset_id
select id from core.show_assets where bucket = %(bucket)s and object_key = %(key)s
