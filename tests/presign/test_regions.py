"""Regions: the configured region's chain, and each bucket's own region for presigned URLs.

The region comes from ``s3.region`` (file or TRR_ASSETS_S3_REGION), else the
boto3 way (AWS_REGION, AWS_DEFAULT_REGION, the profile), else us-east-1. A
presigned URL is signed for its bucket's region: ``s3.bucket_regions``, else
asked of S3 once per bucket. Buckets live in moto, in two regions; botocore's
own presigned URL for a client of the bucket's region is the oracle.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.auth
import pytest
import structlog
from moto import mock_aws

from tests.support.postgres import make_show
from tests.support.s3 import make_settings
from trr_assets import cli, storage
from trr_assets.config import S3Settings, load_settings, settings_from_mapping
from trr_assets.errors import ConfigError, StorageError
from trr_assets.presign import Presigner
from trr_assets.storage import regions

BUCKETS = {"trr-east": "us-east-1", "trr-west": "eu-west-1", "trr-south": "ap-southeast-2"}
NOW = 1_764_000_123


# --- the configured region's chain -----------------------------------------------


@pytest.fixture
def no_region(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Nothing sets a region: no AWS_REGION, AWS_DEFAULT_REGION or profile."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    return monkeypatch


def _region(environ: dict[str, str], file_region: str | None = None) -> str:
    data = {} if file_region is None else {"s3": {"region": file_region}}
    s3 = settings_from_mapping(data, environ=environ).s3
    return storage.configured_region(s3)


def test_region_defaults_to_us_east_1(no_region):
    """No s3.region and nothing from boto3: us-east-1."""
    assert settings_from_mapping({}).s3.region == ""
    assert _region({}) == "us-east-1"
    assert storage.make_client(S3Settings()).meta.region_name == "us-east-1"


def test_region_comes_the_boto3_way(no_region, tmp_path):
    """AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region."""
    profile = tmp_path / "aws-config"
    profile.write_text("[profile trr]\nregion = ap-south-1\n")
    no_region.setenv("AWS_CONFIG_FILE", str(profile))
    no_region.setenv("AWS_PROFILE", "trr")
    assert _region({}) == "ap-south-1"
    no_region.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert _region({}) == "eu-central-1"
    no_region.setenv("AWS_REGION", "eu-west-1")
    assert _region({}) == "eu-west-1"
    assert storage.make_client(S3Settings()).meta.region_name == "eu-west-1"


def test_the_file_and_trr_assets_s3_region_override_boto3(no_region):
    """s3.region in the file wins over AWS_REGION; TRR_ASSETS_S3_REGION wins over the file."""
    no_region.setenv("AWS_REGION", "eu-west-1")
    assert _region({}, file_region="us-west-2") == "us-west-2"
    assert _region({"TRR_ASSETS_S3_REGION": "ca-central-1"}, file_region="us-west-2") == "ca-central-1"


def test_bucket_regions_from_the_file_and_the_environment(tmp_path):
    """s3.bucket_regions is a TOML table; TRR_ASSETS_S3_BUCKET_REGIONS an inline table or name=region pairs."""
    path = tmp_path / "config.toml"
    path.write_text('[s3.bucket_regions]\ntrr-west = "eu-west-1"\n"trr.dotted" = "us-east-2"\n')
    assert load_settings(path, environ={}).s3.bucket_regions == {"trr-west": "eu-west-1", "trr.dotted": "us-east-2"}
    for raw in ('{ trr-west = "eu-west-1", trr-east = "us-east-1" }', "trr-west=eu-west-1, trr-east = us-east-1"):
        settings = load_settings(path, environ={"TRR_ASSETS_S3_BUCKET_REGIONS": raw})
        assert settings.s3.bucket_regions == {"trr-west": "eu-west-1", "trr-east": "us-east-1"}


@pytest.mark.parametrize("data,environ,message", [
    ({"region": "Not A Region"}, {}, "s3.region must be a region name"),
    ({"bucket_regions": {"Bad_Bucket": "eu-west-1"}}, {}, "s3.bucket_regions has 'Bad_Bucket'"),
    ({"bucket_regions": {"trr-west": "eu west"}}, {}, "s3.bucket_regions has 'eu west' for trr-west"),
    ({"bucket_regions": ["trr-west"]}, {}, "s3.bucket_regions must be a table of strings"),
    ({}, {"TRR_ASSETS_S3_BUCKET_REGIONS": "trr-west"}, "s3.bucket_regions must be a TOML inline table"),
])
def test_bad_regions_are_one_line_config_errors(data, environ, message):
    with pytest.raises(ConfigError, match=message) as caught:
        settings_from_mapping({"s3": data}, environ=environ)
    assert "\n" not in str(caught.value)


# --- each bucket's URLs signed for its region -----------------------------------------


@pytest.fixture
def buckets(aws_env: None) -> Iterator[None]:
    """moto S3 with one bucket in each of three regions."""
    with mock_aws():
        for bucket, region in BUCKETS.items():
            client = boto3.client("s3", region_name=region)
            if region == "us-east-1":
                client.create_bucket(Bucket=bucket)
            else:
                client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        yield


def _botocore_url(s3: S3Settings, region: str, bucket: str, key: str, method: str = "get") -> str:
    """botocore's presigned URL from a client made for ``region``, at NOW."""
    client = storage.make_client(dataclasses.replace(s3, region=region))
    when = dt.datetime.fromtimestamp(NOW, dt.timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        return str(client.generate_presigned_url(
            f"{method}_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900))


def _scope_region(url: str) -> str:
    return unquote(parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]).split("/")[2]


@pytest.mark.parametrize("style", ["virtual", "path", "auto"])
def test_each_url_is_signed_for_its_buckets_region_as_botocore_signs_it(buckets, db_url, style):
    """Buckets in three regions, one presigner: each URL names its bucket's region and is botocore's, byte for byte."""
    settings = make_settings(db_url, s3={"addressing_style": style, "bucket_regions": {}})
    assert storage.configured_region(settings.s3) == "us-east-1"
    with Presigner(settings, clock=lambda: NOW + 0.5) as presigner:
        for bucket, region in BUCKETS.items():
            for method in ("get", "put"):
                url = presigner.url_for_key(bucket, "shows/a b/ü.png", method)
                assert _scope_region(url) == region
                assert url == _botocore_url(settings.s3, region, bucket, "shows/a b/ü.png", method)


def test_regions_are_discovered_once_per_bucket(buckets, db_url):
    """Many URLs, one discovery (a HeadBucket) per bucket."""
    settings = make_settings(db_url, s3={"bucket_regions": {}})
    with structlog.testing.capture_logs() as logs, Presigner(settings, clock=lambda: NOW) as presigner:
        for n in range(20):
            for bucket in BUCKETS:
                presigner.url_for_key(bucket, f"shows/{n}.png")
    found = [(e["bucket"], e["region"]) for e in logs if e["event"] == "bucket_region_discovered"]
    assert sorted(found) == sorted(BUCKETS.items())


def test_bucket_regions_override_discovery(buckets, db_url):
    """A bucket named in s3.bucket_regions is signed for that region and never asked about."""
    settings = make_settings(db_url, s3={"bucket_regions": {"trr-west": "eu-north-1"}})
    with structlog.testing.capture_logs() as logs, Presigner(settings, clock=lambda: NOW) as presigner:
        url = presigner.url_for_key("trr-west", "k")
    assert _scope_region(url) == "eu-north-1"
    assert url == _botocore_url(settings.s3, "eu-north-1", "trr-west", "k")
    assert not [e for e in logs if e["event"] == "bucket_region_discovered"]


def test_get_urls_signs_each_asset_for_its_buckets_region(buckets, db_url, conn):
    """Assets in buckets of different regions, one get_urls call: each URL carries its own bucket's region."""
    show = make_show(conn)
    ids = {}
    for bucket in BUCKETS:
        ids[bucket] = conn.execute(
            "insert into core.show_assets (show_id, bucket, object_key) values (%s, %s, %s) returning id",
            (show, bucket, f"shows/{show}/{bucket}.png"),
        ).fetchone()[0]
    settings = make_settings(db_url, s3={"bucket_regions": {}})
    with Presigner(settings, clock=lambda: NOW) as presigner:
        urls = presigner.get_urls(list(ids.values()), claims={"role": "anon"})
    for bucket, asset in ids.items():
        assert urls[asset] == _botocore_url(settings.s3, BUCKETS[bucket], bucket, f"shows/{show}/{bucket}.png")


def test_a_configured_region_elsewhere_still_signs_us_east_1_buckets_for_us_east_1(buckets, db_url, monkeypatch):
    """AWS_REGION=eu-west-1 (the client's region) does not leak into a us-east-1 bucket's URL."""
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = make_settings(db_url, s3={"bucket_regions": {}})
    with Presigner(settings, clock=lambda: NOW) as presigner:
        assert _scope_region(presigner.url_for_key("trr-east", "k")) == "us-east-1"
        assert _scope_region(presigner.url_for_key("trr-west", "k")) == "eu-west-1"


def test_a_bucket_whose_region_cannot_be_found_is_one_line(buckets, db_url, tmp_path, capsys):
    """No such bucket: StorageError in one line from the library; exit 1 and one stderr line from the CLI."""
    settings = make_settings(db_url, s3={"bucket_regions": {}})
    with Presigner(settings) as presigner, pytest.raises(StorageError) as caught:
        presigner.url_for_key("trr-nowhere", "k")
    assert str(caught.value) == "s3: cannot find the region of bucket trr-nowhere: it does not exist or is not visible"
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[logging]\nformat = "json"\n')
    assert cli.main(["--config", str(config), "presign", "s3://trr-nowhere/k"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "cannot find the region of bucket trr-nowhere" in captured.err
    assert "Traceback" not in captured.err
    structlog.reset_defaults()


def test_bucket_region_falls_back_to_get_bucket_location(buckets):
    """A store whose HeadBucket carries no x-amz-bucket-region: GetBucketLocation answers."""
    client = storage.make_client(S3Settings(region="us-east-1"))

    def drop_region_header(response_dict: Any, **_: Any) -> None:
        response_dict["headers"].pop("x-amz-bucket-region", None)

    client.meta.events.register("before-parse.s3.HeadBucket", drop_region_header)
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    assert regions.bucket_region(client, "trr-west") == "eu-west-1"
    assert regions.bucket_region(client, "trr-east") == "us-east-1"
    assert calls == ["HeadBucket", "GetBucketLocation"] * 2


def test_example_config_documents_the_region_keys():
    text = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text()
    assert 'region = ""' in text and "bucket_regions = {}" in text


def test_regions_are_discovered_over_http_from_an_s3_endpoint(db_url, aws_env):
    """Against an S3 endpoint on a real socket: a bucket made in eu-west-1 is found there; its URL fetches it."""
    import urllib.request

    from tests.support.moto_server import moto_server

    with moto_server() as endpoint:
        s3 = S3Settings(endpoint_url=endpoint, addressing_style="path", region="eu-west-1")
        maker = storage.make_client(s3)
        maker.create_bucket(Bucket="trr-west", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        maker.put_object(Bucket="trr-west", Key="shows/k.png", Body=b"west bytes")
        settings = make_settings(db_url, s3={"endpoint_url": endpoint, "addressing_style": "path",
                                             "region": "us-east-1", "bucket_regions": {}})
        with structlog.testing.capture_logs() as logs, Presigner(settings) as presigner:
            url = presigner.url_for_key("trr-west", "shows/k.png")
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == b"west bytes"
    assert url.startswith(f"{endpoint}/trr-west/shows/k.png?")
    assert _scope_region(url) == "eu-west-1"
    assert [(e["bucket"], e["region"]) for e in logs if e["event"] == "bucket_region_discovered"] == [
        ("trr-west", "eu-west-1")]
