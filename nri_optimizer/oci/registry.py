"""A client of the OCI distribution API: what ``nri-optimizer convert`` needs, with the standard library.

- pull: a manifest by tag or digest (an index resolved to one platform), a blob into a file (streamed, its
  digest checked), a small blob into memory;
- push: a blob from a file or bytes (POST an upload, then one PUT with the digest; nothing is sent when the
  repository has the blob already), a manifest by tag;
- referrers (OCI distribution 1.1): the manifests whose ``subject`` is a given manifest, from the registry's referrers
  API, or on a registry without one (a 404 there, as docker-registry 2.8 and distribution 3.1 answer) from the
  referrers tag schema: an index tagged ``sha256-<hex of the subject>``; and a push of such a manifest that keeps that
  index current where the registry does not (no ``OCI-Subject`` header in its answer, and no referrers API).

Where: ``docker.io`` is served at registry-1.docker.io, every other registry at its own name. HTTPS with
certificates verified, unless the registry is `insecure`: then HTTPS without verification, or plain HTTP when it
does not speak TLS, as containerd and nydusify treat an insecure registry. Proxies come from the environment
(``https_proxy``, ``no_proxy``...), except for loopback registries, which are always reached directly.

Authentication: anonymous, or the registry's entry in the Docker config (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``, ``auths.<registry>.auth``; credential helpers are not run). A registry that answers 401
says how: ``Basic`` (the credentials are sent), or ``Bearer realm=... service=... scope=...`` (a token is fetched
from the realm, with the credentials if there are any, and used for that repository from then on).

Why not a library: oras-py 0.2.43 retries every failed request five times with sleeps growing to 83 s (more than
two minutes before it says a registry is unreachable), reads a blob whole into memory to push it, and brings
requests and jsonschema along. For referrers it does not serve either: it can set a manifest's ``subject`` on push,
but it neither sets ``artifactType`` nor lists referrers, and knows nothing of the tag-schema fallback.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import platform as host_platform
import random
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nri_optimizer.errors import RegistryError, RegistryUnreachable

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"  # where docker.io's API is served
DEFAULT_TIMEOUT = 60.0  # seconds for a connection or a read to make progress, not for a whole blob
MAX_MANIFEST = 4 << 20  # the size limit distribution puts on a manifest it accepts
_PIECE = 1 << 20  # bytes per read and write while streaming a blob
_ERROR_BODY = 300  # characters of an error body kept when it is not the API's JSON
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_REDIRECTS = (301, 302, 303, 307, 308)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# Pauses before asking again after a 5xx answer to a read (GET, HEAD): docker-registry 2.8 answers 500 for a moment
# to a read of a tag that another client is writing. Two, then the error stands: an outage is said in seconds.
READ_RETRY_PAUSES = (0.5, 1.0)
# Pages of a referrers answer followed (``Link: <...>; rel="next"``): a bound against a registry that loops.
MAX_REFERRER_PAGES = 100
# Rounds of read, add, write and read back of a referrers tag-schema index that other clients keep changing.
TAG_SCHEMA_ATTEMPTS = 5
# The pause before that read back, and before a new round: another client's write, if it raced ours, lands in it.
TAG_SCHEMA_SETTLE = (0.2, 0.6)  # seconds, drawn at random
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def host_platform_name() -> tuple[str, str]:
    """(os, architecture) of this machine as OCI names them."""
    machine = host_platform.machine()
    return "linux", _ARCH.get(machine, machine)


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str  # sha256 of body: what the registry knows it by

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not JSON ({exc})") from None


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One registry (`domain` as image references name it, e.g. ``127.0.0.1:5000`` or ``docker.io``)."""

    def __init__(
        self,
        domain: str,
        *,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        docker_config: Path | None = None,
    ) -> None:
        self.domain = domain
        self.host = DOCKER_HUB_ENDPOINT if domain == DOCKER_HUB else domain
        self.insecure = insecure
        self.timeout = timeout
        self._credentials = docker_credentials(domain, docker_config)
        self._base: str | None = None  # "scheme://host", chosen at the first request
        self._tokens: dict[str, str] = {}  # repository -> bearer token
        self._basic = False  # the registry asked for Basic authentication
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        proxies = urllib.request.ProxyHandler({}) if _is_loopback(self.host) else urllib.request.ProxyHandler()
        self._opener = urllib.request.build_opener(proxies, urllib.request.HTTPSHandler(context=context))
        # HEAD answers are final: urllib would follow a blob's redirect to storage with a GET of the whole blob.
        self._head_opener = urllib.request.build_opener(
            proxies, urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )

    @property
    def base_url(self) -> str:
        """``https://host`` or, for an insecure registry without TLS, ``http://host``; asks the registry once."""
        if self._base is None:
            self._base = self._probe()
        return self._base

    # --- pull ----------------------------------------------------------------------------------------

    def manifest(
        self, repository: str, reference: str, accept: tuple[str, ...] = (*INDEX_TYPES, *IMAGE_MANIFEST_TYPES)
    ) -> Manifest:
        """The manifest (or index) `reference` (a tag or a digest) of `repository`."""
        path = f"/v2/{repository}/manifests/{reference}"
        with self._request("GET", path, repository, headers={"Accept": ", ".join(accept)}) as response:
            body = response.read(MAX_MANIFEST + 1)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"{self._where(path)}: manifest larger than {MAX_MANIFEST} bytes")
        manifest = Manifest(body, media_type or _declared_type(body), digest_of(body))
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryError(f"{self._where(path)}: the registry sent a manifest whose digest is {manifest.digest}")
        return manifest

    def image_manifest(self, repository: str, reference: str, platform: tuple[str, str] | None = None) -> Manifest:
        """The image manifest of `reference`; an index is resolved to `platform` (os, architecture; default this
        machine's)."""
        manifest = self.manifest(repository, reference)
        if manifest.media_type not in INDEX_TYPES:
            if manifest.media_type not in IMAGE_MANIFEST_TYPES:
                raise RegistryError(
                    f"{self.domain}/{repository}:{reference} is a {manifest.media_type or 'manifest'}"
                    f" of no kind we know (expected an image manifest or an index)"
                )
            return manifest
        os_name, arch = platform or host_platform_name()
        for entry in manifest.json().get("manifests", []):
            wanted = entry.get("platform", {})
            if wanted.get("os") == os_name and wanted.get("architecture") == arch:
                return self.manifest(repository, str(entry["digest"]), IMAGE_MANIFEST_TYPES)
        raise RegistryError(f"{self.domain}/{repository}:{reference} has no {os_name}/{arch} image")

    def blob(self, repository: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (an image config), read into memory and checked against its digest."""
        path = f"/v2/{repository}/blobs/{_sha256(digest)}"
        with self._request("GET", path, repository) as response:
            data: bytes = response.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"{self._where(path)}: larger than {limit} bytes")
        if digest_of(data) != digest:
            raise RegistryError(f"{self._where(path)}: the content does not match its digest")
        return data

    def pull_blob(self, repository: str, digest: str, out: Path) -> int:
        """Stream blob `digest` into the file `out`, checking its digest; its size."""
        path = f"/v2/{repository}/blobs/{_sha256(digest)}"
        hasher = hashlib.sha256()
        size = 0
        with self._request("GET", path, repository) as response, open(out, "wb") as file:
            while piece := response.read(_PIECE):
                hasher.update(piece)
                file.write(piece)
                size += len(piece)
        if f"sha256:{hasher.hexdigest()}" != digest:
            out.unlink()
            raise RegistryError(f"{self._where(path)}: the content does not match its digest")
        return size

    # --- push ----------------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        path = f"/v2/{repository}/blobs/{_sha256(digest)}"
        try:
            self._request("HEAD", path, repository, push=True).close()
        except RegistryError as exc:
            if exc.status == 404:
                return False
            if exc.status in _REDIRECTS:  # to the storage that holds it
                return True
            raise
        return True

    def push_blob(self, repository: str, digest: str, content: Path | bytes, *, force: bool = False) -> bool:
        """Upload a blob unless the repository has it (`force`: whether or not); whether it was sent. A file is
        streamed, not read whole."""
        _sha256(digest)
        if not force and self.has_blob(repository, digest):
            return False
        with self._request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository, push=True, headers={"Content-Length": "0"}, data=b""
        ) as response:
            location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self._where(f'/v2/{repository}/blobs/uploads/')}: no Location for the upload")
        url = urllib.parse.urljoin(self.base_url + "/", location)
        url += ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode({"digest": digest})
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(content, Path):
            with open(content, "rb") as file:
                self._request("PUT", url, repository, push=True, headers=headers, data=file).close()
        else:
            self._request("PUT", url, repository, push=True, headers=headers, data=content).close()
        return True

    def push_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Put a manifest under `tag`; its digest."""
        self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            repository,
            push=True,
            headers={"Content-Type": media_type},
            data=body,
        ).close()
        return digest_of(body)

    # --- referrers -----------------------------------------------------------------------------------

    def referrers(self, repository: str, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose ``subject`` is the manifest `subject` (a digest), of `artifact_type`
        only when given (filtered here too: a registry may ignore the filter): from the referrers API, else from the
        referrers tag schema's index."""
        found = self._referrers_api(repository, subject, artifact_type)
        if found is None:
            found = self._tag_schema_index(repository, subject)
        return [d for d in found if artifact_type is None or d.get("artifactType") == artifact_type]

    def push_referrer(
        self, repository: str, body: bytes, media_type: str, replaces: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> str:
        """Put a manifest that has a ``subject``, by its digest, and make it a referrer of that subject: the registry
        does when it answers ``OCI-Subject`` or has the referrers API; otherwise it is added to the tag schema's
        index, from which descriptors that `replaces` picks are removed at the same time. Its digest."""
        digest = digest_of(body)
        try:
            manifest = json.loads(body)
            subject = str(manifest["subject"]["digest"])
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"manifest {digest} has no subject: not a referrer") from None
        path = f"/v2/{repository}/manifests/{digest}"
        with self._request(
            "PUT", path, repository, push=True, headers={"Content-Type": media_type}, data=body
        ) as response:
            indexed = response.headers.get("OCI-Subject") == subject
        if indexed or self._referrers_api(repository, subject, None) is not None:
            return digest
        descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(body)}
        artifact_type = manifest.get("artifactType") or manifest.get("config", {}).get("mediaType")
        if artifact_type:
            descriptor["artifactType"] = artifact_type
        if manifest.get("annotations"):
            descriptor["annotations"] = manifest["annotations"]
        self._add_to_tag_schema(repository, subject, descriptor, replaces or (lambda _: False))
        return digest

    def _referrers_api(self, repository: str, subject: str, artifact_type: str | None) -> list[dict[str, Any]] | None:
        """The referrers API's answer, all pages; None when the registry has no such API (it answers 404)."""
        url = f"/v2/{repository}/referrers/{_sha256(subject)}"
        if artifact_type is not None:
            url += "?" + urllib.parse.urlencode({"artifactType": artifact_type})
        found: list[dict[str, Any]] = []
        for page in range(MAX_REFERRER_PAGES):
            try:
                with self._request("GET", url, repository, headers={"Accept": OCI_INDEX}) as response:
                    body = response.read(MAX_MANIFEST + 1)
                    link = response.headers.get("Link", "")
            except RegistryError as exc:
                if exc.status == 404 and page == 0:
                    return None
                raise
            found += _index_entries(body, self._where(url))
            if (following := _LINK_NEXT.search(link)) is None:
                return found
            url = urllib.parse.urljoin(self.base_url + "/", following[1])
        raise RegistryError(f"{self._where(url)}: more than {MAX_REFERRER_PAGES} pages of referrers")

    def _tag_schema_index(self, repository: str, subject: str) -> list[dict[str, Any]]:
        """The descriptors in the tag schema's index of `subject` ([] when there is none)."""
        try:
            index = self.manifest(repository, referrers_tag(subject), (OCI_INDEX,))
        except RegistryError as exc:
            if exc.status == 404:
                return []
            raise
        return _index_entries(index.body, f"{self.domain}/{repository}:{referrers_tag(subject)}")

    def _add_to_tag_schema(
        self, repository: str, subject: str, descriptor: dict[str, Any], replaces: Callable[[Mapping[str, Any]], bool]
    ) -> None:
        """Read, add, write: the tag schema has no atomic update (a registry without the referrers API has no
        conditional PUT either), so another client's write between our read and our write would drop ours. Reading
        the index back after a pause, and adding again when ours is missing, makes that loss need two races in a
        row; a loss that gets through is said by the next push of the same list, which finds it missing."""
        tag = referrers_tag(subject)
        for _ in range(TAG_SCHEMA_ATTEMPTS):
            kept = [
                d
                for d in self._tag_schema_index(repository, subject)
                if d.get("digest") != descriptor["digest"] and not replaces(d)
            ]
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*kept, descriptor]}
            self.push_manifest(repository, tag, json.dumps(index, separators=(",", ":")).encode(), OCI_INDEX)
            time.sleep(random.uniform(*TAG_SCHEMA_SETTLE))
            if any(d.get("digest") == descriptor["digest"] for d in self._tag_schema_index(repository, subject)):
                return
        raise RegistryError(
            f"{self.domain}/{repository}:{tag}: other clients kept rewriting the referrers index; "
            f"{descriptor['digest']} was not in it after {TAG_SCHEMA_ATTEMPTS} attempts"
        )

    # --- HTTP ----------------------------------------------------------------------------------------

    def _probe(self) -> str:
        """The base URL that answers ``/v2/`` (any HTTP status will do: 401 asks for credentials)."""
        problems = []
        for scheme in ("https", "http") if self.insecure else ("https",):
            url = f"{scheme}://{self.host}/v2/"
            try:
                self._opener.open(urllib.request.Request(url, method="GET"), timeout=self.timeout).close()
            except urllib.error.HTTPError as exc:
                exc.close()
            except (urllib.error.URLError, OSError) as exc:
                problems.append(f"{url}: {_reason(exc)}")
                continue
            return f"{scheme}://{self.host}"
        hint = "" if self.insecure else " (a plain-HTTP registry must be named insecure)"
        raise RegistryUnreachable(f"cannot reach registry {self.domain}: {'; '.join(problems)}{hint}")

    def _request(
        self,
        method: str,
        path_or_url: str,
        repository: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        data: bytes | IO[bytes] | None = None,
    ) -> Any:
        """Send a request, authenticating once if the registry asks, and asking again after a read's 5xx answer
        (READ_RETRY_PAUSES); the response (a context manager)."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        pauses = list(READ_RETRY_PAUSES) if method in ("GET", "HEAD") else []
        authenticated = False
        while True:
            request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
            if (authorization := self._authorization(repository)) is not None:
                # Unredirected: a blob GET is often redirected to storage that must not see our credentials.
                request.add_unredirected_header("Authorization", authorization)
            try:
                opener = self._head_opener if method == "HEAD" else self._opener
                return opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                detail = _api_error(exc)
                if exc.code == 401 and not authenticated and self._authenticate(challenge, repository, push):
                    authenticated = True
                    if hasattr(data, "seek"):
                        data.seek(0)  # type: ignore[union-attr]
                    continue
                if exc.code >= 500 and pauses:
                    time.sleep(pauses.pop(0))
                    continue
                raise RegistryError(
                    f"{method} {self._where(url)}: HTTP {exc.code} {detail}".rstrip(), status=exc.code
                ) from None
            except (urllib.error.URLError, OSError) as exc:
                raise RegistryUnreachable(f"{method} {self._where(url)}: {_reason(exc)}") from None

    def _authorization(self, repository: str) -> str | None:
        if (token := self._tokens.get(repository)) is not None:
            return f"Bearer {token}"
        if self._basic and self._credentials is not None:
            return _basic(self._credentials)
        return None

    def _authenticate(self, challenge: str, repository: str, push: bool) -> bool:
        """Act on a 401's challenge; whether a retry can succeed."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if scheme.lower() == "basic":
            if self._credentials is None or self._basic:
                return False
            self._basic = True
            return True
        if scheme.lower() != "bearer" or "realm" not in params:
            return False
        actions = "pull,push" if push else "pull"
        query = {
            "service": params.get("service", ""),
            "scope": params.get("scope") or f"repository:{repository}:{actions}",
        }
        request = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if self._credentials is not None:
            request.add_unredirected_header("Authorization", _basic(self._credentials))
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                answer = json.loads(response.read(MAX_MANIFEST))
        except urllib.error.HTTPError as exc:
            raise RegistryError(
                f"token for {repository} from {params['realm']}: HTTP {exc.code} {_api_error(exc)}".rstrip()
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnreachable(f"token for {repository} from {params['realm']}: {_reason(exc)}") from None
        except ValueError:
            raise RegistryError(f"token for {repository} from {params['realm']}: the answer is not JSON") from None
        token = answer.get("token") or answer.get("access_token")
        if not token:
            return False
        self._tokens[repository] = str(token)
        return True

    def _where(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else f"{self.domain}{path_or_url}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer is raised as an HTTPError, which the caller reads


def docker_credentials(domain: str, config: Path | None = None) -> tuple[str, str] | None:
    """(user, password) for `domain` from the Docker config's ``auths``, or None."""
    path = config or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        auths = json.loads(path.read_text()).get("auths") or {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise RegistryError(f"{path}: not a Docker config we can read ({exc})") from None
    keys = [domain, f"https://{domain}", f"http://{domain}", f"https://{domain}/v1/", f"https://{domain}/v2/"]
    if domain == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        encoded = (auths.get(key) or {}).get("auth")
        if encoded:
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"{path}: auths.{key}.auth is not base64 of user:password") from None
            return user, password
    return None


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for a subject: its digest with "-" for ":"."""
    return _sha256(digest).replace(":", "-", 1)


def _index_entries(body: bytes, where: str) -> list[dict[str, Any]]:
    """The descriptors of an image index (a referrers answer or a tag-schema index)."""
    try:
        entries = json.loads(body).get("manifests") or []
    except (ValueError, AttributeError):
        raise RegistryError(f"{where}: not an image index") from None
    if (
        len(body) > MAX_MANIFEST
        or not isinstance(entries, list)
        or not all(isinstance(d, dict) and isinstance(d.get("digest"), str) for d in entries)
    ):
        raise RegistryError(f"{where}: not an image index of descriptors")
    return entries


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def _sha256(digest: str) -> str:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise RegistryError(f"{digest!r}: only sha256 digests are supported")
    return digest


def _declared_type(body: bytes) -> str:
    """A manifest's own mediaType field, for a registry that sends no Content-Type."""
    try:
        return str(json.loads(body).get("mediaType", ""))
    except (ValueError, AttributeError):
        return ""


def _api_error(exc: urllib.error.HTTPError) -> str:
    """The distribution API's error body ({"errors": [{"code", "message"}]}) as text."""
    try:
        body = exc.read(MAX_MANIFEST)
    except OSError:
        body = b""
    finally:
        exc.close()
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:_ERROR_BODY].decode(errors="replace").strip()


def _reason(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return str(getattr(reason, "strerror", None) or reason)


def _is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
