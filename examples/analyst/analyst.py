#!/usr/bin/env python3
"""An analyst's first five minutes with txpipe's postings topic.

Reads ledger.postings.v1 from the beginning with confluent-kafka (the
librdkafka client; nothing of txpipe's), drops records seen before
(event_id), checks that every account's versions follow each other with no
gap and that each posting's digest chains to the one before it
(docs/events.md, Digests), rebuilds every balance, loads the postings into
DuckDB and answers a question with SQL.

    python analyst.py --brokers 127.0.0.1:9092 [--topic ledger.postings.v1] [--json]

It stops at the end of the topic. Exit status 0: every chain holds; 1: a gap
or a broken link, named on stderr; 2: the topic could not be read, or holds
records that are not postings. An account whose first postings the topic's
retention has retired is checked from the first one it still holds.
With --json it prints {"balances": {account: balance}, "postings": n,
"top": [[account, credits], ...]} for machines (the tests compare it with
the API); otherwise a readable report.
"""

import argparse
import hashlib
import json
import sys
import uuid

import duckdb
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def digest(prev, p, command_id):
    """The digest of posting p (its data) chained to prev, as docs/events.md defines it."""
    s = f"{prev}|{p['account_id']}|{p['account_version']}|{p['currency']}|{p['amount']}|{p['balance_after']}|{command_id}"
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def read_all(brokers, topic):
    """Every committed record of topic, every partition from its beginning to its end as it is now.

    The end of a partition is the broker's word (partition EOF), not an offset
    computed here: transaction markers and aborted records hold offsets that
    read_committed never returns."""
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"analyst-{uuid.uuid4()}",  # no offsets kept: each run reads it all
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
    try:
        meta = consumer.list_topics(topic, timeout=30)
        if meta.topics[topic].error is not None:
            raise KafkaException(meta.topics[topic].error)
        partitions = sorted(meta.topics[topic].partitions)
        # From the first offset the topic still holds (retention may have
        # retired older records).
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        done, records = set(), []
        while len(done) < len(partitions):
            msg = consumer.poll(10)
            if msg is None:
                raise TimeoutError("no record and no end of partition for 10 s")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                    continue
                raise KafkaException(msg.error())
            records.append(msg)
        return records
    finally:
        consumer.close()


def check(records):
    """Dedupe, check versions and digests per account; return postings, balances, problems."""
    seen, last, link, balances = set(), {}, {}, {}
    postings, problems = [], []
    for msg in records:
        event = json.loads(msg.value())
        if event["event_id"] in seen:
            continue  # published again after a relay crash
        seen.add(event["event_id"])
        p = event["data"]
        acct, version = p["account_id"], p["account_version"]
        if version <= last.get(acct, 0):
            continue  # an older copy arriving late
        if acct not in last and version > 1:
            # The topic no longer holds the account's first postings (its
            # retention retired them): the chain is checked from here on.
            print(f"analyst: account {acct} starts at version {version} on this topic", file=sys.stderr)
            last[acct], link[acct] = version - 1, None
        if version != last.get(acct, 0) + 1:
            problems.append(f"account {acct}: version {version} follows {last.get(acct, 0)}: postings are missing")
        want = p.get("digest") if link.get(acct, "") is None else digest(link.get(acct, ""), p, event["command_id"])
        if p.get("digest", want) != want:
            problems.append(f"account {acct}: version {version} does not chain to the posting before it")
        last[acct], link[acct], balances[acct] = version, want, p["balance_after"]
        postings.append((acct, version, p["currency"], p["amount"], p["balance_after"], p["command_type"], event["occurred_at"]))
    return postings, balances, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="ledger.postings.v1")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        records = read_all(args.brokers, args.topic)
        postings, balances, problems = check(records)
    except Exception as e:  # the topic could not be read, or holds what is not a posting
        print(f"analyst: reading {args.topic}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    db = duckdb.connect()
    db.execute("""CREATE TABLE postings (account_id TEXT, account_version BIGINT, currency TEXT, amount BIGINT,
                  balance_after BIGINT, command_type TEXT, occurred_at TIMESTAMPTZ)""")
    db.executemany("INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?)", postings)
    # Who received the most, per currency, external accounts aside.
    top = db.execute("""SELECT account_id, sum(amount) AS credits FROM postings
                        WHERE amount > 0 AND account_id NOT LIKE '@external:%'
                        GROUP BY account_id ORDER BY credits DESC, account_id LIMIT 5""").fetchall()
    # The balance is the last balance_after, and the sum of the amounts: both must agree.
    for acct, total in db.execute("SELECT account_id, sum(amount) FROM postings GROUP BY account_id").fetchall():
        if total != balances[acct]:
            problems.append(f"account {acct}: amounts sum to {total}, the last balance_after is {balances[acct]}")

    for p in problems:
        print(f"analyst: {p}", file=sys.stderr)
    if args.json:
        print(json.dumps({"balances": balances, "postings": len(postings), "top": top}))
    else:
        print(f"{len(records)} records, {len(postings)} postings after dedupe, {len(balances)} accounts")
        for acct in sorted(balances):
            print(f"  {acct:40} {balances[acct]:>15}")
        print("most received:")
        for acct, credits in top:
            print(f"  {acct:40} {credits:>15}")
        print("every chain holds" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
