#!/usr/bin/env python3
"""Enqueue through the Django ORM on models made by inspectdb (tests/engine/clients.rs).

Usage: python3 tests/clients/django_enqueue.py postgres://user@host:port/db

Django runs standalone: settings.configure() with the database from argv, one app package
in a temporary directory, and that app's models.py is exactly what `inspectdb work_orders
work_items` printed, as an upstream that owns neither schema would start. With those models
it creates one order and
  * one item by .objects.create(...) with a client-chosen id, which must be kept;
  * one item by .objects.create(...) without an id;
  * many items by bulk_create with client-chosen ids.
It prints a JSON summary on stdout (diagnostics go to stderr) and exits non-zero if any
check fails.

What Django (5.2) can and cannot do here, as this script finds it:
  * inspectdb does not carry database defaults over (no db_default), and a model INSERT
    sends every column. So the client sends a value for each NOT NULL column that has only
    a column default (status, created_at, run_at, the counters, the order's metadata), using
    Now() so the database's clock is used. The id and the item's priority may be NULL:
    the insert trigger fills both (a time-ordered id; the order's priority).
  * Django does not read back a database-generated value for a primary key that is not an
    AutoField. An item created without an id is inserted (the trigger gives it an id) but
    its pk stays None in Python. The order needs a client-chosen id for the same reason: an
    item cannot reference an order whose pk Django does not know.
  * bulk_create without ids is refused by Django itself (an AssertionError: PostgreSQL can
    return rows from a bulk INSERT, but Django asks for no column to come back), and its
    transaction is rolled back, so nothing is half-enqueued. With client-chosen ids it works.
The summary reports these outcomes instead of assuming them, so a Django that behaves
differently is seen, not hidden: items whose id Django did not learn are counted in
"unidentified_items".
"""

import importlib
import io
import json
import os
import sys
import tempfile
import uuid
from urllib.parse import unquote, urlsplit

import django
from django.conf import settings

ITEM_TYPE = "TICKET"
TENANT = os.environ.get("ORDERLY_TENANT_ID")
BULK = 200
APP = "orderly_inspected"


def check(condition, message):
    if not condition:
        print(f"django_enqueue: {message}", file=sys.stderr)
        sys.exit(1)


def database_settings(url):
    parts = urlsplit(url)
    check(parts.scheme in ("postgres", "postgresql"), f"not a PostgreSQL URL: {url}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # ORDERLY_TENANT_ID: run as a producer under row-level security (the session names
        # its tenant; tests/engine/clients.rs logs in as the producer role).
        "OPTIONS": {"options": f"-c orderly.tenant_id={TENANT}"} if TENANT else {},
    }


def main():
    if len(sys.argv) != 2:
        print("usage: django_enqueue.py DATABASE_URL", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="orderly-django-") as tmp:
        package = os.path.join(tmp, APP)
        os.mkdir(package)
        open(os.path.join(package, "__init__.py"), "w").close()
        sys.path.insert(0, tmp)
        settings.configure(
            DATABASES={"default": database_settings(sys.argv[1])},
            INSTALLED_APPS=[APP],
            USE_TZ=True,
        )
        django.setup()
        summary = enqueue(package)
    print(json.dumps(summary))


def enqueue(package):
    from django.core.management import call_command

    models_source = io.StringIO()
    call_command("inspectdb", "work_orders", "work_items", "work_item_dependencies", stdout=models_source)
    # inspectdb's output is used unchanged. What it marks for review does not stop an
    # INSERT: the enum columns are guessed as TextField ("This field type is a guess."),
    # and their values go to PostgreSQL as untyped literals, which it casts to the enum;
    # each model has its primary key; on_delete=DO_NOTHING and managed=False are right for
    # tables that orderly's migrations own.
    with open(os.path.join(package, "models.py"), "w") as f:
        f.write(models_source.getvalue())
    models = importlib.import_module(f"{APP}.models")
    WorkOrders, WorkItems, Dependencies = models.WorkOrders, models.WorkItems, models.WorkItemDependencies
    check(WorkItems._meta.pk.name == "id", "inspectdb gave work_items no id primary key")
    print(f"django_enqueue: inspectdb models, work_items.id is {type(WorkItems._meta.pk).__name__}", file=sys.stderr)

    from django.db.models.functions import Now

    order = WorkOrders.objects.create(
        id=uuid.uuid4(),
        workflow_id="default",
        tenant_id=TENANT or uuid.uuid4(),
        created_by=uuid.uuid4(),
        priority="HIGH",
        status="PENDING",
        metadata={},
        created_at=Now(),
        updated_at=Now(),
    )

    def item(n, **fields):
        return dict(
            work_order=order,
            type=ITEM_TYPE,
            content=json.dumps({"client": "django", "n": n}),
            status="QUEUED",
            priority=None,  # the insert trigger copies the order's
            created_at=Now(),
            run_at=Now(),
            attempt=0,
            attempt_base=0,
            rescues=0,
            **fields,
        )

    def stored():
        return WorkItems.objects.filter(work_order=order).count()

    # One item with a client-chosen id: kept.
    chosen = uuid.uuid4()
    single = WorkItems.objects.create(**item(0, id=chosen))
    check(single.pk == chosen, f"client-chosen id {chosen} became {single.pk}")

    # One item without an id: inserted with the database's id, which Django does not learn.
    server_ids, unidentified = [], 0
    without_id = WorkItems.objects.create(**item(1))
    if without_id.pk is None:
        unidentified += 1
        print("django_enqueue: created without an id: inserted, pk stays None", file=sys.stderr)
    else:
        server_ids.append(without_id.pk)
        print(f"django_enqueue: created without an id: pk {without_id.pk}", file=sys.stderr)
    check(stored() == 2, f"{stored()} items stored after two creates")

    # bulk_create without ids: what Django does with it.
    before = stored()
    try:
        probe = WorkItems.objects.bulk_create([WorkItems(**item(n)) for n in range(3)])
        learned = [obj.pk for obj in probe if obj.pk is not None]
        server_ids.extend(learned)
        unidentified += len(probe) - len(learned)
        bulk_without_ids = f"inserted {len(probe)}, {len(learned)} ids learned"
        check(stored() == before + len(probe), "bulk_create without ids: rows missing")
    except AssertionError:
        bulk_without_ids = "refused by Django (AssertionError), rolled back"
        check(stored() == before, "bulk_create without ids was refused but left rows behind")
    print(f"django_enqueue: bulk_create without ids: {bulk_without_ids}", file=sys.stderr)

    # bulk_create with client-chosen ids: all kept.
    bulk_ids = [uuid.uuid4() for _ in range(BULK)]
    created = WorkItems.objects.bulk_create([WorkItems(**item(n, id=i)) for n, i in enumerate(bulk_ids)])
    check([obj.pk for obj in created] == bulk_ids, "bulk_create changed client-chosen ids")
    # A diamond (b and c need a, d needs b and c) and its edges, in one transaction: an item
    # committed without its edges could start before they are inserted.
    from django.db import transaction

    graph = [uuid.uuid4() for _ in range(4)]
    with transaction.atomic():
        a, b, c, d = (WorkItems.objects.create(**item(100 + n, id=i)) for n, i in enumerate(graph))
        Dependencies.objects.bulk_create(
            [
                Dependencies(work_item=b, depends_on=a, kind="BLOCKS", created_at=Now()),
                Dependencies(work_item=c, depends_on=a, kind="BLOCKS", created_at=Now()),
                Dependencies(work_item=d, depends_on=b, kind="BLOCKS", created_at=Now()),
                Dependencies(work_item=d, depends_on=c, kind="SOFT", created_at=Now()),
            ]
        )
    check(Dependencies.objects.filter(work_item_id=d.pk).count() == 2, "the diamond's edges are not stored")

    client_ids = [chosen] + bulk_ids + graph
    check(WorkItems.objects.filter(pk__in=client_ids).count() == len(client_ids), "a client-chosen id is not stored")
    check(stored() == len(client_ids) + len(server_ids) + unidentified, "stored items do not add up")

    return {
        "library": "django",
        "version": django.get_version(),
        "order_id": str(order.pk),
        "item_type": ITEM_TYPE,
        "server_ids": [str(i) for i in server_ids],
        "client_ids": [str(i) for i in client_ids],
        "unidentified_items": unidentified,
        "bulk_create_without_ids": bulk_without_ids,
        "graph": [str(i) for i in graph],
    }


if __name__ == "__main__":
    main()
