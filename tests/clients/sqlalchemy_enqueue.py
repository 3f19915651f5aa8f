#!/usr/bin/env python3
"""Enqueue through the SQLAlchemy ORM with automap reflection (tests/engine/clients.rs).

Usage: python3 tests/clients/sqlalchemy_enqueue.py postgresql://user@host:port/db

No table is written by hand: automap reflects work_orders and work_items from the database,
as an upstream that owns neither schema would. It adds one order and
  (a) single items without an id: the ORM must learn each server-generated id at flush
      (work_items.id has a visible server default since migration 0012; before it, the
      flush failed with "FlushError: Instance <work_items> has a NULL identity key");
  (b) one item with a client-chosen id, which must be kept;
  (c) bulk inserts: session.add_all of many objects without ids, and an ORM bulk insert()
      with a list of parameter sets and RETURNING;
  (e) a small graph: four items (a diamond: b and c need a, d needs b and c) and their
      edges in work_item_dependencies, reflected too, in the same transaction.
It prints a JSON summary on stdout (diagnostics go to stderr) and exits non-zero if any
check fails.
"""

import json
import os
import sys
import uuid
import warnings

import sqlalchemy
from sqlalchemy import MetaData, create_engine, insert, select
from sqlalchemy.ext.automap import automap_base
from sqlalchemy.orm import Session

ITEM_TYPE = "TICKET"
SINGLE = 3
ADD_ALL = 100
BULK = 200


def check(condition, message):
    if not condition:
        print(f"sqlalchemy_enqueue: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    if len(sys.argv) != 2:
        print("usage: sqlalchemy_enqueue.py DATABASE_URL", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    # postgres://… (as libpq and sqlx write it) is not a dialect name SQLAlchemy knows.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    # ORDERLY_TENANT_ID: run as a producer under row-level security (tests/engine/clients.rs
    # logs in as the producer role): the session names its tenant, and the orders are that
    # tenant's.
    tenant = os.environ.get("ORDERLY_TENANT_ID")
    connect_args = {"options": f"-c orderly.tenant_id={tenant}"} if tenant else {}
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), connect_args=connect_args)

    # Reflecting a CHECK constraint marked NOT VALID (migration 0012 adds three) makes
    # SQLAlchemy warn that it cannot validate the "dialect_options" argument its own
    # PostgreSQL dialect returned; the constraint is reflected and nothing else is affected.
    warnings.filterwarnings("ignore", message=r"Can't validate argument 'dialect_options'", category=sqlalchemy.exc.SAWarning)
    metadata = MetaData()
    metadata.reflect(engine, only=["work_orders", "work_items", "work_item_dependencies"])
    Base = automap_base(metadata=metadata)
    Base.prepare()
    WorkOrder = Base.classes.work_orders
    WorkItem = Base.classes.work_items

    id_default = metadata.tables["work_items"].c.id.server_default
    check(id_default is not None, "reflection found no server default on work_items.id")

    with Session(engine) as session, session.begin():
        order = WorkOrder(workflow_id="default", tenant_id=tenant or uuid.uuid4(), created_by=uuid.uuid4(), priority="HIGH")
        session.add(order)
        session.flush()
        check(order.id is not None, "the order's id was not learned at flush")

        # (a) One at a time, no id: the ORM learns the id the database made.
        single = []
        for n in range(SINGLE):
            item = WorkItem(work_order_id=order.id, type=ITEM_TYPE, content=json.dumps({"client": "sqlalchemy", "n": n}))
            session.add(item)
            session.flush()
            check(item.id is not None, f"single item {n}: id not set after flush")
            print(f"sqlalchemy_enqueue: single item {n} flushed with id {item.id}", file=sys.stderr)
            single.append(item)

        # (b) A client-chosen id is kept.
        chosen = uuid.uuid4()
        client_item = WorkItem(id=chosen, work_order_id=order.id, type=ITEM_TYPE, content='{"client": "chosen id"}')
        session.add(client_item)
        session.flush()
        check(client_item.id == chosen, f"client-chosen id {chosen} became {client_item.id}")

        # (c1) Many objects at once, no ids: one flush.
        many = [
            WorkItem(work_order_id=order.id, type=ITEM_TYPE, content=json.dumps({"client": "add_all", "n": n}))
            for n in range(ADD_ALL)
        ]
        session.add_all(many)
        session.flush()
        check(all(item.id is not None for item in many), "add_all: an id was not set after flush")

        # (c2) ORM bulk INSERT with a list of parameter sets; the ids come back by RETURNING.
        rows = [
            {"work_order_id": order.id, "type": ITEM_TYPE, "content": json.dumps({"client": "bulk", "n": n})}
            for n in range(BULK)
        ]
        bulk_ids = list(session.scalars(insert(WorkItem).returning(WorkItem.id, sort_by_parameter_order=True), rows))
        check(len(bulk_ids) == BULK and None not in bulk_ids, f"bulk insert returned {len(bulk_ids)} ids")

        # (e) A diamond and its edges, through the reflected edge table (an association
        # table, written with Core inside the ORM's transaction).
        graph = []
        for n in range(4):
            item = WorkItem(work_order_id=order.id, type=ITEM_TYPE, content=json.dumps({"client": "graph", "n": n}))
            session.add(item)
            session.flush()
            graph.append(item)
        a, b, c, d = (item.id for item in graph)
        graph_ids = [a, b, c, d]
        edges = metadata.tables["work_item_dependencies"]
        session.execute(
            insert(edges),
            [
                {"work_item_id": b, "depends_on_id": a},
                {"work_item_id": c, "depends_on_id": a},
                {"work_item_id": d, "depends_on_id": b, "kind": "BLOCKS"},
                {"work_item_id": d, "depends_on_id": c, "kind": "SOFT"},
            ],
        )

        server_ids = [item.id for item in single + many + graph] + bulk_ids
        check(len(set(server_ids)) == len(server_ids), "server-generated ids repeat")

        # What the database holds for this order, read back in the same transaction.
        stored = set(session.scalars(select(WorkItem.id).where(WorkItem.work_order_id == order.id)))
        check(stored == set(server_ids) | {chosen}, "the ids in the database differ from the ids the ORM holds")
        order_id = order.id

        # (d) One statement: a second order and its items, the items by insert().from_select
        # over the order's INSERT ... RETURNING (a CTE). Under row-level security the item
        # policy must accept items of an order inserted by the same statement.
        new_order = (
            insert(WorkOrder)
            .values(workflow_id="default", tenant_id=tenant or uuid.uuid4(), created_by=uuid.uuid4())
            .returning(WorkOrder.id)
            .cte("new_order")
        )
        statement = (
            insert(WorkItem)
            .from_select(
                ["work_order_id", "type", "content"],
                select(new_order.c.id, sqlalchemy.literal(ITEM_TYPE), sqlalchemy.literal('{"client": "from_select"}')),
            )
            .returning(WorkItem.work_order_id)
        )
        cte_order_ids = list(session.scalars(statement))
        check(len(cte_order_ids) == 1, f"from_select inserted {len(cte_order_ids)} items")
        cte_order_id = cte_order_ids[0]
        cte_items = session.scalar(select(sqlalchemy.func.count()).select_from(WorkItem).where(WorkItem.work_order_id == cte_order_id))

    summary = {
        "library": "sqlalchemy",
        "version": sqlalchemy.__version__,
        "order_id": str(order_id),
        "item_type": ITEM_TYPE,
        "server_ids": [str(i) for i in server_ids],
        "client_ids": [str(chosen)],
        "unidentified_items": 0,
        "cte_order_id": str(cte_order_id),
        "cte_items": cte_items,
        "graph": [str(i) for i in graph_ids],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
