"""What the testing scripts share: reading config.json and one configured httpx client."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "config.json"
OUTPUT_DIR = HERE / "selfies_output"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="JSON with interface_base_url, api_key"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")


def make_client(config_path: Path, timeout: float) -> httpx.Client:
    config = json.loads(config_path.read_text())
    headers = {"X-API-Key": config["api_key"]} if config.get("api_key") else {}
    return httpx.Client(base_url=config["interface_base_url"].rstrip("/"), headers=headers, timeout=timeout)


def describe_error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"HTTP {resp.status_code} {body.get('code', '')}: {body.get('detail', '')}"
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
