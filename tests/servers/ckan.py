"""A CKAN emulator: the part of the Action API (v3) damdup uses, written from
CKAN's documentation and the code it documents.

- Action API, request and answer shapes: https://docs.ckan.org/en/latest/api/index.html
  (`{"help", "success", "result"}`; errors `{"success": false, "error": {"__type", ...}}`
  with 400 Bad request / Search Query Error, 403 Authorization Error, 404 Not Found
  Error, 409 Validation Error / Search Error, as ckan/views/api.py answers them).
- `package_search`: https://docs.ckan.org/en/latest/api/index.html#ckan.logic.action.get.package_search
  `q`, `fq` (a Solr filter; CKAN adds `+capacity:public` unless `include_private`
  and `+state:(active)`, and asks Solr with `q.op=AND`), `sort` (default
  `score desc, metadata_modified desc`), `rows` (default 10, silently cut to
  `ckan.search.rows_max` = 1000), `start`; unknown parameters are a Search Query
  Error. Solr keeps dates to the millisecond, so `metadata_modified` filters and
  sorts at that precision while the answer prints CKAN's microseconds.
- `resource_patch`: https://docs.ckan.org/en/latest/api/index.html#ckan.logic.action.patch.resource_patch
  (resource_show + the given keys, then resource_update: keys not given are
  kept, extra keys included; the resource's `metadata_modified` moves only when
  something changed, its dataset's on every update).
- API tokens in the `Authorization` header, the bare token
  (https://docs.ckan.org/en/latest/api/index.html#authentication-and-api-tokens).
  CKAN treats an unknown token as no token at all: the request runs anonymously.
- Uploaded files at `/dataset/<id>/resource/<resource id>/download/<file name>`.
- CKAN core has no rate limit and makes no thumbnails: neither is emulated.

Image resources live in the shared `Library` (the resource id is the asset id);
datasets, organizations and non-image resources (CSV, PDF) live here.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, ClassVar
from urllib.parse import quote

import requests
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, Marks
from adapters.ckan import Ckan, CkanSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, json_response

# Obviously fake tokens for the test users.
SYSADMIN_TOKEN = "ckan-test-sysadmin-token-0000"
EDITOR_TOKEN = "ckan-test-editor-token-0000"
# The harness's unit: an editor of every organization the harness adds to.
DAMDUP_TOKEN = "ckan-test-damdup-token-0000"

ROWS_MAX = 1000  # ckan.search.rows_max
DEFAULT_SORT = "score desc, metadata_modified desc"
# ckan/lib/search/query.py VALID_SOLR_PARAMETERS plus what package_search pops first.
SEARCH_PARAMETERS = frozenset(
    {"q", "fq", "fq_list", "sort", "rows", "start", "fl", "wt", "qf", "bf", "boost",
     "facet", "facet.mincount", "facet.limit", "facet.field", "extras", "df", "q.op",
     "defType", "mm", "tie", "include_private", "include_drafts", "include_deleted",
     "use_default_schema", "include_group_types", "callback"}
)  # fmt: skip
FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/heic": "HEIC",
}
# Resource keys resource_patch may not change here.
READ_ONLY = frozenset({"id", "package_id", "position", "metadata_modified", "state", "created"})


def ckan_time(moment: datetime) -> str:
    """CKAN prints naive UTC `datetime.isoformat()`: microseconds only when non-zero."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


def solr_millis(moment: datetime) -> int:
    """Solr keeps dates to the millisecond: the rest of CKAN's microseconds is cut."""
    return int(moment.replace(microsecond=0).timestamp()) * 1000 + moment.microsecond // 1000


@dataclass
class User:
    name: str
    sysadmin: bool = False
    memberships: dict[str, str] = field(default_factory=dict)  # organization name -> role


@dataclass
class Organization:
    id: str
    name: str
    title: str
    created: datetime


@dataclass
class Dataset:
    id: str
    name: str
    title: str
    organization: str | None  # organization name
    created: datetime
    modified: datetime
    private: bool = False
    state: str = "active"
    notes: str = ""
    extras: dict[str, str] = field(default_factory=dict)  # classic key/value extras
    fields: dict[str, Any] = field(default_factory=dict)  # ckanext-scheming top-level fields
    tags: list[str] = field(default_factory=list)
    resource_ids: list[str] = field(default_factory=list)  # in position order
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # non-image resources


class ActionError(Exception):
    def __init__(self, status: int, error: Any) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


def not_found(message: str) -> ActionError:
    return ActionError(404, {"__type": "Not Found Error", "message": f"Not found: {message}"})


def not_authorized(message: str) -> ActionError:
    return ActionError(
        403, {"__type": "Authorization Error", "message": f"Access denied: {message}"}
    )


def validation_error(errors: dict[str, list[str]]) -> ActionError:
    return ActionError(409, {**errors, "__type": "Validation Error"})


def search_error(message: str) -> ActionError:
    return ActionError(409, {"__type": "Search Error", "message": f"Search error: {message!r}"})


def search_query_error(message: str) -> ActionError:
    return ActionError(
        400, {"__type": "Search Query Error", "message": f"Search Query is invalid: {message!r}"}
    )


# -- a small Solr standard-query parser (what CKAN's fq reaches) ---------------


class SolrSyntaxError(ValueError):
    pass


@dataclass
class Term:
    field: str
    value: str
    phrase: bool = False


@dataclass
class Range:
    field: str
    low: str
    high: str
    low_inclusive: bool
    high_inclusive: bool


@dataclass
class MatchAll:
    pass


@dataclass
class Clause:
    occur: str  # "must", "should", "must_not"
    query: Any


@dataclass
class Boolean:
    clauses: list[Clause]


class SolrParser:
    """Lucene's classic syntax: `+`/`-`/NOT, AND/OR (with the default operator
    AND, as CKAN sets q.op), parentheses, `field:term`, `field:"phrase"`,
    `field:[a TO b]` with `{}` for exclusive ends, `field:(a OR b)`, `*:*`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def parse(self) -> Boolean:
        query = self._group(default_field="text")
        self._space()
        if self.position < len(self.text):
            raise SolrSyntaxError(
                f"Cannot parse '{self.text}': unexpected '{self.text[self.position]}'"
            )
        return query

    def _space(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def _peek_word(self) -> str:
        match = re.compile(r"(AND|OR|NOT|&&|\|\|)(?=[\s(]|$)").match(self.text, self.position)
        return match.group(1) if match else ""

    def _group(self, default_field: str) -> Boolean:
        clauses: list[Clause] = []
        while True:
            self._space()
            if self.position >= len(self.text) or self.text[self.position] == ")":
                break
            conjunction = ""
            word = self._peek_word()
            if word in ("AND", "&&", "OR", "||"):
                if not clauses:
                    raise SolrSyntaxError(f"Cannot parse '{self.text}': '{word}' starts a clause")
                conjunction = "AND" if word in ("AND", "&&") else "OR"
                self.position += len(word)
                self._space()
                word = self._peek_word()
            modifier = ""
            if word == "NOT":
                modifier = "-"
                self.position += 3
                self._space()
            elif self.position < len(self.text) and self.text[self.position] in "+-":
                modifier = self.text[self.position]
                self.position += 1
            query = self._clause(default_field)
            self._add(clauses, conjunction, modifier, query)
        if not clauses:
            raise SolrSyntaxError(f"Cannot parse '{self.text}': empty clause")
        return Boolean(clauses)

    @staticmethod
    def _add(clauses: list[Clause], conjunction: str, modifier: str, query: Any) -> None:
        # org.apache.lucene.queryparser.classic.QueryParserBase.addClause, default AND.
        if clauses and conjunction == "AND" and clauses[-1].occur != "must_not":
            clauses[-1].occur = "must"
        if clauses and conjunction == "OR" and clauses[-1].occur != "must_not":
            clauses[-1].occur = "should"
        prohibited = modifier == "-"
        required = not prohibited and (modifier == "+" or conjunction != "OR")
        occur = "must_not" if prohibited else "must" if required else "should"
        clauses.append(Clause(occur, query))

    def _clause(self, default_field: str) -> Any:
        self._space()
        if self.text.startswith("*:*", self.position):
            self.position += 3
            return MatchAll()
        if self.position < len(self.text) and self.text[self.position] == "(":
            return self._parenthesised(default_field)
        match = re.compile(r"([A-Za-z_][\w.\-]*):").match(self.text, self.position)
        field_name = default_field
        if match:
            field_name = match.group(1)
            self.position = match.end()
            if self.position < len(self.text) and self.text[self.position] == "(":
                return self._parenthesised(field_name)
        return self._value(field_name)

    def _parenthesised(self, default_field: str) -> Boolean:
        self.position += 1
        group = self._group(default_field)
        if self.position >= len(self.text) or self.text[self.position] != ")":
            raise SolrSyntaxError(f"Cannot parse '{self.text}': missing ')'")
        self.position += 1
        return group

    def _value(self, field_name: str) -> Any:
        if self.position >= len(self.text):
            raise SolrSyntaxError(f"Cannot parse '{self.text}': value expected")
        character = self.text[self.position]
        if character in "[{":
            return self._range(field_name)
        if character == '"':
            return Term(field_name, self._quoted(), phrase=True)
        word = self._word(stop=" \t\r\n()")
        if not word:
            raise SolrSyntaxError(f"Cannot parse '{self.text}': value expected")
        return Term(field_name, word)

    def _quoted(self) -> str:
        self.position += 1
        out = []
        while self.position < len(self.text) and self.text[self.position] != '"':
            if self.text[self.position] == "\\" and self.position + 1 < len(self.text):
                self.position += 1
            out.append(self.text[self.position])
            self.position += 1
        if self.position >= len(self.text):
            raise SolrSyntaxError(f"Cannot parse '{self.text}': unclosed '\"'")
        self.position += 1
        return "".join(out)

    def _word(self, stop: str) -> str:
        out = []
        while self.position < len(self.text) and self.text[self.position] not in stop:
            if self.text[self.position] == "\\" and self.position + 1 < len(self.text):
                self.position += 1
            out.append(self.text[self.position])
            self.position += 1
        return "".join(out)

    def _range(self, field_name: str) -> Range:
        low_inclusive = self.text[self.position] == "["
        self.position += 1
        self._space()
        low = self._quoted() if self.text.startswith('"', self.position) else self._word(" ]}")
        self._space()
        if not self.text.startswith("TO", self.position):
            raise SolrSyntaxError(f"Cannot parse '{self.text}': 'TO' expected in a range")
        self.position += 2
        self._space()
        high = self._quoted() if self.text.startswith('"', self.position) else self._word(" ]}")
        self._space()
        if self.position >= len(self.text) or self.text[self.position] not in "]}":
            raise SolrSyntaxError(f"Cannot parse '{self.text}': range not closed")
        high_inclusive = self.text[self.position] == "]"
        self.position += 1
        return Range(field_name, low, high, low_inclusive, high_inclusive)


DATE_FIELDS = frozenset({"metadata_modified", "metadata_created"})
TEXT_FIELDS = frozenset({"text", "title", "notes", "res_name", "res_description"})


def solr_date(value: str) -> int:
    """Milliseconds of a Solr date literal ("2024-01-01T00:00:00Z", fractions allowed)."""
    if value == "NOW":
        return solr_millis(datetime.now(UTC))
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z", value)
    if not match:
        raise search_error(f"Invalid Date String:'{value}'")
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    fraction = (match.group(2) or ".0")[1:]
    return int(whole.timestamp()) * 1000 + int(fraction[:3].ljust(3, "0"))


def matches(query: Any, document: dict[str, list[Any]]) -> bool:
    if isinstance(query, MatchAll):
        return True
    if isinstance(query, Boolean):
        musts = [c for c in query.clauses if c.occur == "must"]
        shoulds = [c for c in query.clauses if c.occur == "should"]
        if any(matches(c.query, document) for c in query.clauses if c.occur == "must_not"):
            return False
        if not all(matches(c.query, document) for c in musts):
            return False
        if not musts and shoulds:
            return any(matches(c.query, document) for c in shoulds)
        return True
    values = document.get(query.field, [])
    if isinstance(query, Range):
        low: int | str | None
        high: int | str | None
        if query.field in DATE_FIELDS:
            low = None if query.low == "*" else solr_date(query.low)
            high = None if query.high == "*" else solr_date(query.high)
        else:
            low = None if query.low == "*" else query.low
            high = None if query.high == "*" else query.high
        return any(_within(value, low, high, query) for value in values)
    if query.value == "*":
        return bool(values)
    if query.field in DATE_FIELDS:
        wanted = solr_date(query.value)
        return any(value == wanted for value in values)
    if query.field in TEXT_FIELDS:
        needle = query.value.lower()
        if needle.endswith("*") and not query.phrase:
            stem = needle[:-1]
            return any(
                word.startswith(stem) for value in values for word in str(value).lower().split()
            )
        return any(needle in str(value).lower() for value in values)
    if query.value.endswith("*") and not query.phrase:
        return any(str(value).startswith(query.value[:-1]) for value in values)
    return any(str(value) == query.value for value in values)


def _within(value: Any, low: Any, high: Any, query: Range) -> bool:
    if low is not None and (value < low or (value == low and not query.low_inclusive)):
        return False
    return not (high is not None and (value > high or (value == high and not query.high_inclusive)))


# -- the server ------------------------------------------------------------------


class CkanEmulator(Emulator):
    url_map = Map(
        [
            Rule("/api/3/action/<name>", endpoint="action", methods=["GET", "POST"]),
            Rule("/api/action/<name>", endpoint="action", methods=["GET", "POST"]),
            Rule(
                "/dataset/<dataset_id>/resource/<resource_id>/download/<path:filename>",
                endpoint="download",
            ),
            Rule("/dataset/<dataset_id>/resource/<resource_id>/download", endpoint="download"),
            Rule("/dataset/<dataset_id>/resource/<resource_id>", endpoint="resource_page"),
            Rule("/dataset/<dataset_id>", endpoint="dataset_page"),
        ]
    )

    def __init__(self, library: Library | None = None) -> None:
        super().__init__(library)
        self.organizations: dict[str, Organization] = {}
        self.datasets: dict[str, Dataset] = {}
        self.owner: dict[str, str] = {}  # image resource id -> dataset id
        self.file_modified: dict[str, datetime] = {}  # image resource id -> last_modified
        self.users: dict[str, User] = {}
        self.add_user("sysadmin", SYSADMIN_TOKEN, sysadmin=True)

    # -- content, for harnesses and tests -----------------------------------

    def add_user(
        self,
        name: str,
        token: str,
        sysadmin: bool = False,
        memberships: dict[str, str] | None = None,
    ) -> User:
        user = User(name, sysadmin, dict(memberships or {}))
        self.users[token] = user
        return user

    def add_organization(self, title: str, name: str | None = None) -> Organization:
        name = name or slug(title)
        with self.library.lock:
            if name not in self.organizations:
                self.organizations[name] = Organization(
                    str(uuid.uuid4()), name, title, self.library.clock.now()
                )
            return self.organizations[name]

    def add_dataset(
        self,
        title: str,
        organization: str | None = None,
        *,
        name: str | None = None,
        private: bool = False,
        extras: dict[str, str] | None = None,
        fields: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        notes: str = "",
    ) -> Dataset:
        """`organization` is an organization's title; it is created when new."""
        with self.library.lock:
            org = self.add_organization(organization) if organization else None
            moment = self.library.clock.tick()
            dataset = Dataset(
                id=str(uuid.uuid4()),
                name=name or f"{slug(title)}-{uuid.uuid4().hex[:6]}",
                title=title,
                organization=org.name if org else None,
                created=moment,
                modified=moment,
                private=private,
                notes=notes,
                extras=dict(extras or {}),
                fields=dict(fields or {}),
                tags=list(tags or []),
            )
            self.datasets[dataset.id] = dataset
            return dataset

    def add_image(
        self,
        dataset_id: str,
        filename: str,
        data: bytes,
        resource_fields: dict[str, Any] | None = None,
    ) -> StoredAsset:
        """An uploaded image resource; `resource_fields` override core resource
        fields (format, mimetype, url, ...) or add extra keys."""
        with self.library.lock:
            dataset = self.datasets[dataset_id]
            asset = self.library.add(
                filename, data, dict(resource_fields or {}), asset_id=str(uuid.uuid4())
            )
            self.owner[asset.id] = dataset.id
            self.file_modified[asset.id] = asset.created
            dataset.resource_ids.append(asset.id)
            dataset.modified = asset.created
            return asset

    def add_file(
        self,
        dataset_id: str,
        name: str,
        format: str,
        mimetype: str | None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """A non-image resource (CSV, PDF, an API link)."""
        with self.library.lock:
            dataset = self.datasets[dataset_id]
            moment = self.library.clock.tick()
            resource_id = str(uuid.uuid4())
            resource = {
                "id": resource_id,
                "name": name,
                "format": format,
                "mimetype": mimetype,
                "url": url or name,
                "url_type": "" if url else "upload",
                "size": 2048,
                "created": ckan_time(moment),
                "last_modified": ckan_time(moment),
                "metadata_modified": ckan_time(moment),
                "description": "",
            }
            dataset.files[resource_id] = resource
            dataset.resource_ids.append(resource_id)
            dataset.modified = moment
            return resource

    def patch_resource(self, resource_id: str, changes: dict[str, Any]) -> bool:
        """resource_patch without HTTP; True when a value changed."""
        with self.library.lock:
            dataset = self._dataset_of(resource_id)
            asset = self.library.get(resource_id)
            changed = False
            if asset is not None:
                current = self._image_resource("", dataset, asset)
                for key, value in changes.items():
                    if key not in READ_ONLY and current.get(key) != value:
                        asset.metadata[key] = value
                        changed = True
            else:
                current = dataset.files[resource_id]
                for key, value in changes.items():
                    if key not in READ_ONLY and current.get(key) != value:
                        current[key] = value
                        changed = True
            # resource_update always updates the dataset; the resource's own
            # metadata_modified moves only when one of its values changed.
            moment = self.library.clock.tick()
            dataset.modified = moment
            if changed and asset is not None:
                asset.modified = moment
            elif changed:
                dataset.files[resource_id]["metadata_modified"] = ckan_time(moment)
            return changed

    def replace_image(self, resource_id: str, data: bytes) -> None:
        """A new upload to an existing resource: last_modified moves too."""
        with self.library.lock:
            asset = self.library.replace(resource_id, data)
            self.file_modified[resource_id] = asset.modified
            self._dataset_of(resource_id).modified = asset.modified

    def delete_resource(self, resource_id: str) -> None:
        with self.library.lock:
            dataset = self._dataset_of(resource_id)
            if self.library.get(resource_id) is not None:
                self.library.remove(resource_id)
            else:
                dataset.files.pop(resource_id)
                self.library.clock.tick()
            dataset.resource_ids.remove(resource_id)
            dataset.modified = self.library.clock.now()

    def delete_dataset(self, dataset_id: str) -> None:
        """package_delete: the dataset stays with state=deleted, out of searches."""
        with self.library.lock:
            dataset = self.datasets[dataset_id]
            dataset.state = "deleted"
            dataset.modified = self.library.clock.tick()

    def set_modified(self, dataset_id: str, moment: datetime) -> None:
        """Give a dataset an older modification time, as a transaction that began
        before another but committed after it leaves the two."""
        with self.library.lock:
            self.datasets[dataset_id].modified = moment

    def reset(self) -> None:
        with self.library.lock:
            self.library.reset()
            self.datasets.clear()
            self.organizations.clear()
            self.owner.clear()
            self.file_modified.clear()

    def _dataset_of(self, resource_id: str) -> Dataset:
        dataset_id = self.owner.get(resource_id)
        if dataset_id is None or self.library.get(resource_id) is None:
            for dataset in self.datasets.values():
                if resource_id in dataset.files:
                    return dataset
            raise not_found("Resource was not found.")
        return self.datasets[dataset_id]

    # -- rendering as CKAN dictizes ------------------------------------------

    def _image_resource(
        self, host_url: str, dataset: Dataset, asset: StoredAsset
    ) -> dict[str, Any]:
        fields = dict(asset.metadata)
        filename = asset.name
        resource: dict[str, Any] = {
            "cache_last_updated": None,
            "cache_url": None,
            "created": ckan_time(asset.created),
            "datastore_active": False,
            "description": "",
            "format": FORMATS.get(asset.mime_type, ""),
            "hash": "",
            "id": asset.id,
            "last_modified": ckan_time(self.file_modified.get(asset.id, asset.created)),
            "metadata_modified": ckan_time(asset.modified),
            "mimetype": asset.mime_type,
            "mimetype_inner": None,
            "name": filename,
            "package_id": dataset.id,
            "position": dataset.resource_ids.index(asset.id),
            "resource_type": None,
            "size": len(asset.data),
            "state": "active",
            "url": f"{host_url}dataset/{dataset.id}/resource/{asset.id}/download/{quote(filename)}",
            "url_type": "upload",
        }
        resource.update(fields)
        return resource

    def _dataset_dict(self, host_url: str, dataset: Dataset) -> dict[str, Any]:
        resources = []
        for resource_id in dataset.resource_ids:
            asset = self.library.get(resource_id)
            if asset is not None:
                resources.append(self._image_resource(host_url, dataset, asset))
            elif resource_id in dataset.files:
                resource = dict(dataset.files[resource_id])
                if resource.get("url_type") == "upload":
                    resource["url"] = (
                        f"{host_url}dataset/{dataset.id}/resource/{resource_id}/download/"
                        f"{quote(resource['name'])}"
                    )
                resources.append(
                    {
                        **resource,
                        "package_id": dataset.id,
                        "position": dataset.resource_ids.index(resource_id),
                        "state": "active",
                    }
                )
        org = self.organizations.get(dataset.organization or "")
        record: dict[str, Any] = {
            "author": None,
            "author_email": None,
            "creator_user_id": "5c7b7a1e-0000-4000-8000-000000000001",
            "extras": [{"key": k, "value": v} for k, v in sorted(dataset.extras.items())],
            "groups": [],
            "id": dataset.id,
            "isopen": True,
            "license_id": "cc-by-4.0",
            "license_title": "Creative Commons Attribution 4.0",
            "license_url": "https://creativecommons.org/licenses/by/4.0/",
            "maintainer": None,
            "maintainer_email": None,
            "metadata_created": ckan_time(dataset.created),
            "metadata_modified": ckan_time(dataset.modified),
            "name": dataset.name,
            "notes": dataset.notes,
            "num_resources": len(resources),
            "num_tags": len(dataset.tags),
            "organization": None
            if org is None
            else {
                "id": org.id,
                "name": org.name,
                "title": org.title,
                "type": "organization",
                "description": "",
                "image_url": "",
                "created": ckan_time(org.created),
                "is_organization": True,
                "approval_status": "approved",
                "state": "active",
            },
            "owner_org": org.id if org else None,
            "private": dataset.private,
            "relationships_as_object": [],
            "relationships_as_subject": [],
            "resources": resources,
            "state": dataset.state,
            "tags": [
                {"display_name": t, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, t)), "name": t}
                for t in dataset.tags
            ],
            "title": dataset.title,
            "type": "dataset",
            "url": "",
            "version": None,
        }
        record.update(dataset.fields)
        return record

    def _document(self, dataset: Dataset) -> dict[str, list[Any]]:
        """The dataset as CKAN indexes it in Solr (ckan/lib/search/index.py)."""
        record = self._dataset_dict("", dataset)
        resources = record["resources"]
        org = record["organization"]
        document: dict[str, list[Any]] = {
            "id": [dataset.id],
            "name": [dataset.name],
            "title": [dataset.title],
            "notes": [dataset.notes],
            "state": [dataset.state],
            "capacity": ["private" if dataset.private else "public"],
            "organization": [org["name"]] if org else [],
            "owner_org": [org["id"]] if org else [],
            "tags": list(dataset.tags),
            "license_id": ["cc-by-4.0"],
            "res_format": [r.get("format") for r in resources if r.get("format")],
            "res_name": [r.get("name") for r in resources if r.get("name")],
            "res_description": [r.get("description") for r in resources if r.get("description")],
            "res_url": [r.get("url") for r in resources if r.get("url")],
            "metadata_modified": [solr_millis(dataset.modified)],
            "metadata_created": [solr_millis(dataset.created)],
            "site_id": ["default"],
            "entity_type": ["package"],
            "dataset_type": ["dataset"],
        }
        for key, value in dataset.extras.items():
            document[f"extras_{key}"] = [value]
        for key, value in dataset.fields.items():
            document.setdefault(key, value if isinstance(value, list) else [value])
        document["text"] = [
            dataset.title,
            dataset.name,
            dataset.notes,
            *dataset.tags,
            *dataset.extras.values(),
            *document["res_name"],
            *document["res_description"],
        ]
        return document

    def _visible(self, dataset: Dataset, user: User | None) -> bool:
        if not dataset.private:
            return True
        if user is None:
            return False
        return user.sysadmin or (dataset.organization or "") in user.memberships

    # -- HTTP ------------------------------------------------------------------

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        if request.path.startswith("/api/"):
            return json_response(
                {"help": "", "success": False,
                 "error": {"__type": exc.name, "message": exc.description}},
                status=exc.code or 500,
            )  # fmt: skip
        return html_page(exc.code or 500, exc.name)

    def _user(self, request: Request) -> User | None:
        # CKAN reads the bare token from the configured header (`Authorization`);
        # an unknown token leaves the request anonymous rather than refused.
        return self.users.get(request.headers.get("Authorization", ""))

    def action(self, request: Request, name: str) -> Response:
        help_url = f"{request.host_url}api/3/action/help_show?name={name}"
        actions = {
            "package_search": (self._package_search, True),
            "package_show": (self._package_show, True),
            "resource_show": (self._resource_show, True),
            "organization_list_for_user": (self._organization_list_for_user, True),
            "resource_patch": (self._resource_patch, False),
            "resource_delete": (self._resource_delete, False),
        }
        if name not in actions:
            return json_response(f"Bad request - Action name not known: {name}", status=400)
        function, side_effect_free = actions[name]
        try:
            data = self._request_data(request, side_effect_free)
        except ValueError as exc:
            return json_response(f"Bad request - JSON Error: {exc}", status=400)
        try:
            result = function(request, data, self._user(request))
        except ActionError as exc:
            return json_response(
                {"help": help_url, "success": False, "error": exc.error}, status=exc.status
            )
        return json_response({"help": help_url, "success": True, "result": result})

    @staticmethod
    def _request_data(request: Request, side_effect_free: bool) -> dict[str, Any]:
        if request.method == "GET":
            if not side_effect_free:
                raise ValueError("Invalid request. Please use POST method for your request")
            out: dict[str, Any] = {}
            for key, values in request.args.lists():
                out[key] = values[0] if len(values) == 1 else values
            return out
        if request.form:
            return dict(request.form)
        body = request.get_data()
        if not body:
            return {}
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"Error decoding JSON data. Error: {exc!r}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"Request data JSON decoded to {data!r} but it needs to be a dictionary."
            )
        return data

    # -- actions -----------------------------------------------------------------

    def _package_search(
        self, request: Request, data: dict[str, Any], user: User | None
    ) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        rows = natural_number(data.get("rows", 10), "rows", errors)
        start = natural_number(data.get("start", 0), "start", errors)
        if errors:
            raise validation_error(errors)
        rows = min(rows, ROWS_MAX)  # limit_to_configured_maximum: cut, not refused
        unknown = sorted(
            key for key in data if key not in SEARCH_PARAMETERS and not key.startswith("ext_")
        )
        if unknown:
            raise search_query_error(f"Invalid search parameters: {unknown}")
        include_private = as_bool(data.get("include_private", False))
        include_drafts = as_bool(data.get("include_drafts", False))
        fq = str(data.get("fq", "") or "")
        filters = [fq] if fq.strip() else []
        fq_list = data.get("fq_list") or []
        filters.extend(fq_list if isinstance(fq_list, list) else [fq_list])
        if not include_private:
            filters.append("+capacity:public")
        if "+state" not in fq:
            filters.append("+state:(active OR draft)" if include_drafts else "+state:active")
        q = str(data.get("q") or "*:*")
        try:
            queries = [SolrParser(text).parse() for text in [q, *filters]]
        except SolrSyntaxError as exc:
            raise search_error(f"SOLR returned an error running query: {exc}") from None
        sort = str(data.get("sort") or DEFAULT_SORT)
        keys = sort_keys(sort)
        with self.library.lock:
            found = []
            for dataset in self.datasets.values():
                if not self._visible(dataset, user):
                    continue
                document = self._document(dataset)
                if all(matches(query, document) for query in queries):
                    found.append((dataset, document))
            for field_name, descending in reversed(keys):
                found.sort(key=lambda pair: sort_value(pair[1], field_name), reverse=descending)
            page = found[start : start + rows]
            results = [self._dataset_dict(request.host_url, dataset) for dataset, _ in page]
        return {
            "count": len(found),
            "facets": {},
            "results": results,
            "sort": sort,
            "search_facets": {},
        }

    def _package_show(
        self, request: Request, data: dict[str, Any], user: User | None
    ) -> dict[str, Any]:
        reference = data.get("id")
        if not reference:
            raise validation_error({"id": ["Missing value"]})
        with self.library.lock:
            for dataset in self.datasets.values():
                if reference in (dataset.id, dataset.name) and dataset.state != "deleted":
                    if not self._visible(dataset, user):
                        raise not_authorized(
                            f"User {user.name if user else ''} not authorized to read "
                            f"package {dataset.id}"
                        )
                    return self._dataset_dict(request.host_url, dataset)
        raise not_found("Dataset not found")

    def _resource_show(
        self, request: Request, data: dict[str, Any], user: User | None
    ) -> dict[str, Any]:
        resource_id = data.get("id")
        if not resource_id:
            raise validation_error({"id": ["Missing value"]})
        with self.library.lock:
            dataset = self._dataset_of(str(resource_id))
            if not self._visible(dataset, user):
                raise not_authorized(
                    f"User {user.name if user else ''} not authorized to read resource "
                    f"{resource_id}"
                )
            for resource in self._dataset_dict(request.host_url, dataset)["resources"]:
                if resource["id"] == resource_id:
                    return dict(resource)
        raise not_found("Resource was not found.")

    def _organization_list_for_user(
        self, request: Request, data: dict[str, Any], user: User | None
    ) -> list[dict[str, Any]]:
        # Anonymous users belong to no organization: an empty list, not an error.
        if user is None:
            return []
        permission = str(data.get("permission") or "manage_group")
        roles = {"read": {"member", "editor", "admin"}, "create_dataset": {"editor", "admin"}}
        allowed = roles.get(permission, {"admin"})
        with self.library.lock:
            organizations = sorted(self.organizations.values(), key=lambda o: o.name)
            return [
                {"id": org.id, "name": org.name, "title": org.title, "type": "organization",
                 "is_organization": True, "state": "active",
                 "capacity": "admin" if user.sysadmin else user.memberships[org.name]}
                for org in organizations
                if user.sysadmin or user.memberships.get(org.name) in allowed
            ]  # fmt: skip

    def _may_edit(self, user: User | None, dataset: Dataset, resource_id: str) -> None:
        if user is not None and (
            user.sysadmin or user.memberships.get(dataset.organization or "") in ("editor", "admin")
        ):
            return
        raise not_authorized(
            f"User {user.name if user else ''} not authorized to update resource {resource_id}"
        )

    def _resource_patch(
        self, request: Request, data: dict[str, Any], user: User | None
    ) -> dict[str, Any]:
        resource_id = data.get("id")
        if not resource_id:
            raise validation_error({"id": ["Missing value"]})
        with self.library.lock:
            dataset = self._dataset_of(str(resource_id))
            self._may_edit(user, dataset, str(resource_id))
            self.patch_resource(str(resource_id), {k: v for k, v in data.items() if k != "id"})
        return self._resource_show(request, {"id": resource_id}, user)

    def _resource_delete(self, request: Request, data: dict[str, Any], user: User | None) -> None:
        resource_id = data.get("id")
        if not resource_id:
            raise validation_error({"id": ["Missing value"]})
        with self.library.lock:
            dataset = self._dataset_of(str(resource_id))
            self._may_edit(user, dataset, str(resource_id))
            self.delete_resource(str(resource_id))

    # -- pages and files -----------------------------------------------------------

    def download(
        self, request: Request, dataset_id: str, resource_id: str, filename: str = ""
    ) -> Response:
        with self.library.lock:
            asset = self.library.get(resource_id)
            dataset_key = self.owner.get(resource_id)
            dataset = self.datasets.get(dataset_key or "")
            user = self._user(request)
            if asset is None or dataset is None or dataset_id not in (dataset.id, dataset.name):
                return html_page(404, "Resource not found")
            if dataset.state == "deleted" and not (user and user.sysadmin):
                return html_page(404, "Dataset not found")
            if not self._visible(dataset, user):
                return html_page(403, "Unauthorized to read resource")
            mimetype = asset.metadata.get("mimetype") or asset.mime_type
            data = asset.data
        return Response(
            data,
            content_type=mimetype,
            headers={"Content-Disposition": f'attachment; filename="{asset.name}"'},
        )

    def resource_page(self, request: Request, dataset_id: str, resource_id: str) -> Response:
        with self.library.lock:
            if self.library.get(resource_id) is None:
                return html_page(404, "Resource not found")
        return html_page(200, f"Resource {resource_id}")

    def dataset_page(self, request: Request, dataset_id: str) -> Response:
        with self.library.lock:
            for dataset in self.datasets.values():
                if dataset_id in (dataset.id, dataset.name) and dataset.state == "active":
                    return html_page(200, dataset.title)
        return html_page(404, "Dataset not found")


# -- helpers ---------------------------------------------------------------------


def slug(text: str) -> str:
    """A CKAN name: lowercase letters, digits, - and _."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.lower().translate(str.maketrans("äöå", "aoa")))
    return cleaned.strip("-")[:90] or "x"


def natural_number(value: Any, name: str, errors: dict[str, list[str]]) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        errors[name] = ["Invalid integer"]
        return 0
    if number < 0:
        errors[name] = ["Must be a natural number"]
        return 0
    return number


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "yes", "on", "y", "t", "1")


def sort_keys(sort: str) -> list[tuple[str, bool]]:
    keys = []
    for part in sort.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) != 2 or words[1].lower() not in ("asc", "desc"):
            raise search_query_error('Invalid "sort" parameter')
        keys.append((words[0], words[1].lower() == "desc"))
    return keys


def sort_value(document: dict[str, list[Any]], field_name: str) -> Any:
    if field_name == "score":
        return 0
    values = document.get(field_name) or [""]
    if field_name in DATE_FIELDS:
        return values[0]
    return str(values[0])


def html_page(status: int, title: str) -> Response:
    page = (
        f"<!DOCTYPE html><html><head><title>{escape(title)} - CKAN</title></head>"
        f"<body><h1>{escape(title)}</h1></body></html>"
    )
    return Response(page, status=status, content_type="text/html; charset=utf-8")


# -- the contract's harness ---------------------------------------------------------


class CkanHarness(EmulatorHarness):
    """Each added image gets a dataset of its own (so `page_size`, which counts
    datasets, pages as the contract expects), next to a CSV resource the
    adapter must skip. Location, date and department go where hri.fi keeps
    them: the dataset's `geographic_coverage` and `date_released` extras and
    its organization's title. The unit's token is a user's who edits the
    organizations the harness adds datasets to (marks need one)."""

    kind = "ckan"
    # Every action: the token check and resource_show/resource_patch as well
    # as package_search (file downloads are under /dataset/).
    listing_path = "api/3/action/"
    emulator: CkanEmulator
    MARK_KEYS: ClassVar[dict[str, str]] = {
        "damdup-marks": "damdup_marks",
        "damdup-cluster": "damdup_cluster",
        "damdup-canonical": "damdup_canonical",
    }

    def __init__(self) -> None:
        super().__init__(CkanEmulator())
        self.damdup = self.emulator.add_user("damdup", DAMDUP_TOKEN)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"base_url": self.url, "api_token": DAMDUP_TOKEN, **overrides}

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return Ckan(CkanSettings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        # hri.fi lists anonymously; a token CKAN does not know must still stop the unit.
        return {"api_token": "ckan-test-revoked-token-0000"}

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        extras = {}
        if "location" in metadata:
            extras["geographic_coverage"] = metadata["location"]
        if "date" in metadata:
            extras["date_released"] = metadata["date"]
        return {
            "organization": metadata.get("department", "Helsingin kaupunki"),
            "extras": extras,
        }

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        placed = self.place_metadata(metadata or {})
        dataset = self.emulator.add_dataset(
            f"Valokuva {name}", placed["organization"], extras=placed["extras"]
        )
        self.damdup.memberships[dataset.organization or ""] = "editor"
        asset = self.emulator.add_image(dataset.id, name, data)
        self.emulator.add_file(dataset.id, "kuvaluettelo.csv", "CSV", "text/csv")
        return asset.id

    def touch(self, asset_id: str) -> None:
        # Through the API, as an editor would: resource_patch with a new description.
        reply = requests.post(
            f"{self.emulator.base_url}api/3/action/resource_patch",
            json={"id": asset_id, "description": f"muokattu {uuid.uuid4().hex[:8]}"},
            headers={"Authorization": SYSADMIN_TOKEN},
            timeout=10,
        )
        reply.raise_for_status()

    def remove(self, asset_id: str) -> None:
        reply = requests.post(
            f"{self.emulator.base_url}api/3/action/resource_delete",
            json={"id": asset_id},
            headers={"Authorization": SYSADMIN_TOKEN},
            timeout=10,
        )
        reply.raise_for_status()

    def reset(self) -> None:
        self.emulator.reset()
        assert self.proxy is not None
        self.proxy.clear()

    # -- marks -------------------------------------------------------------

    def action(self, name: str, **data: Any) -> Any:
        """An action straight to the server (not through the proxy), as a
        sysadmin's script would call it."""
        reply = requests.post(
            f"{self.emulator.base_url}api/3/action/{name}",
            json=data,
            headers={"Authorization": SYSADMIN_TOKEN},
            timeout=10,
        )
        reply.raise_for_status()
        return reply.json()["result"]

    def stored_marks(self, asset_id: str) -> Marks:
        resource = self.action("resource_show", id=asset_id)
        return Marks.from_fields({mark: resource.get(key) for mark, key in self.MARK_KEYS.items()})

    def set_foreign(self, asset_id: str) -> None:
        self.action(
            "resource_patch",
            id=asset_id,
            description="Temppeliaukion kirkko & ? ä",
            kuvaaja="Sakari Kiuru",  # someone else's extra key
        )

    def foreign_state(self, asset_id: str) -> Any:
        """The resource as resource_show prints it, but for damdup's keys and
        the change time CKAN moves on every update; its dataset's extras; the
        file's bytes."""
        resource = self.action("resource_show", id=asset_id)
        own = {"metadata_modified", *self.MARK_KEYS.values()}
        kept = {key: value for key, value in resource.items() if key not in own}
        dataset = self.action("package_show", id=resource["package_id"])
        data = self.emulator.library.assets[asset_id].data
        return kept, dataset["extras"], hashlib.sha256(data).hexdigest()
