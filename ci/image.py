"""Pick the CI model jobs' image: the dependency image when the registry has it, else the fallback.

    python ci/image.py --dotenv ci-image.env

Writes ``DIGITOPS_CI_IMAGE=<image>`` for the jobs that need this one (a dotenv report: GitLab
expands it in their ``image:``). The image is ``$CI_REGISTRY_IMAGE/ci:<ci/deps-tag.sh>`` when
the registry answers that it holds that tag, otherwise ``$DIGITOPS_FALLBACK_IMAGE``
(python:3.11-slim), in which ci/install.sh installs everything: slower, never wrong. Any doubt
(no registry, refused login, a timeout) picks the fallback and says why in one line.

Standard library only: it runs in python:3.11-slim before anything is installed. It speaks the
registry's HTTP API v2 (a HEAD on the manifest, with the bearer token the registry's
``WWW-Authenticate`` challenge points to, asked for with the job's registry credentials).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
FALLBACK = "python:3.11-slim"
TIMEOUT = 10.0
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def deps_tag() -> str:
    """The tag for the current dependency files (ci/deps-tag.sh, shared with the build job)."""
    return subprocess.run(["sh", str(HERE / "deps-tag.sh")], capture_output=True, text=True, check=True).stdout.strip()


def _split(image: str) -> tuple[str, str]:
    """``registry.example.com:5050/group/project`` -> (registry, repository path)."""
    registry, _, path = image.partition("/")
    if not path or not ("." in registry or ":" in registry or registry == "localhost"):
        raise ValueError(f"not a registry image name: {image!r}")
    return registry, path


def _challenge(header: str) -> dict[str, str]:
    if not header.lower().startswith("bearer "):
        raise ValueError(f"registry asks for {header.split(' ', 1)[0] or 'nothing'} auth, not a bearer token")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def _token(challenge: dict[str, str], user: str, password: str, scheme: str) -> str:
    realm = challenge.get("realm", "")
    if urllib.parse.urlsplit(realm).scheme not in ("https", scheme):
        raise ValueError(f"token realm {realm!r} is not {scheme}")
    query = urllib.parse.urlencode({k: v for k, v in challenge.items() if k in ("service", "scope")})
    request = urllib.request.Request(f"{realm}?{query}")
    if user:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
        body = json.load(reply)
    token = body.get("token") or body.get("access_token")
    if not token:
        raise ValueError("the registry's token service gave no token")
    return token


def exists(image: str, tag: str, *, user: str = "", password: str = "", scheme: str = "https") -> bool:
    """Whether the registry holds ``image:tag``; raises OSError/ValueError when it cannot tell."""
    registry, path = _split(image)
    url = f"{scheme}://{registry}/v2/{path}/manifests/{urllib.parse.quote(tag)}"

    def head(token: str | None) -> int:
        request = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_TYPES})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and token is None:
                raise _Unauthorized(exc.headers.get("WWW-Authenticate", "")) from None
            return exc.code

    try:
        status = head(None)
    except _Unauthorized as challenge:
        status = head(_token(_challenge(str(challenge)), user, password, scheme))
    if status == 200:
        return True
    if status == 404:
        return False
    raise ValueError(f"registry answered HTTP {status} for {image}:{tag}")


class _Unauthorized(Exception):
    """A 401 carrying the registry's WWW-Authenticate challenge."""


def choose(env: dict[str, str]) -> tuple[str, str]:
    """(image, reason) for the model jobs, from the CI variables in ``env``."""
    fallback = env.get("DIGITOPS_FALLBACK_IMAGE") or FALLBACK
    base = env.get("CI_REGISTRY_IMAGE", "")
    if not base:
        return fallback, "the project has no container registry (CI_REGISTRY_IMAGE is empty)"
    tag = deps_tag()
    image = f"{base}/ci"
    try:
        found = exists(image, tag, user=env.get("CI_REGISTRY_USER", ""), password=env.get("CI_REGISTRY_PASSWORD", ""),
                       scheme=env.get("DIGITOPS_REGISTRY_SCHEME", "https"))
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        return fallback, f"cannot tell whether {image}:{tag} exists ({exc}); installing instead"
    if not found:
        return fallback, f"{image}:{tag} is not built yet (the ci-image job builds it when the dependencies change)"
    return f"{image}:{tag}", "dependencies baked in"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dotenv", type=Path, required=True, help="dotenv file to write DIGITOPS_CI_IMAGE to")
    ns = ap.parse_args(argv)
    image, reason = choose(dict(os.environ))
    ns.dotenv.write_text(f"DIGITOPS_CI_IMAGE={image}\n")
    print(f"model jobs' image: {image} ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
