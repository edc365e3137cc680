#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for txpipe dev/test.
#
#   scripts/kafka.sh start    start (idempotent; returns at once when already up)
#   scripts/kafka.sh stop     SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL
#   scripts/kafka.sh status   exit 0 when running and answering, 3 otherwise
#   scripts/kafka.sh restart
#   scripts/kafka.sh libs     only fetch the jars
#
# The broker runs from Maven Central jars (scripts/kafka/pom.xml: kafka_2.13 +
# log4j2 slf4j binding), copied into the cache on first use / when the pom changes.
#
# Environment:
#   TXPIPE_CACHE_DIR        cache root (default <repo>/.cache); Kafka lives in $TXPIPE_CACHE_DIR/kafka
#   KAFKA_PORT              PLAINTEXT listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT   CONTROLLER listener on 127.0.0.1 (default 9093)
#   KAFKA_SASL_PORT         SASL_SSL listener (SCRAM-SHA-512, TLS) on 127.0.0.1 (default 9094; empty: none);
#                           its CA certificate is copied to $TXPIPE_CACHE_DIR/kafka-ca.crt
#   KAFKA_HEAP_OPTS         default "-Xms512m -Xmx1G"
#   KAFKA_DIR               where this broker keeps config, data and logs (default $TXPIPE_CACHE_DIR/kafka)
#   KAFKA_NODE_ID           node.id (default 1)
#   KAFKA_VOTERS            controller.quorum.voters (default: this node alone)
#   KAFKA_CLUSTER_ID        cluster id used when formatting (default: random)
#   KAFKA_REPLICATION       default and internal topics' replication factor (default 1)
#   KAFKA_MIN_ISR           min.insync.replicas (default 1)
# scripts/kafka-cluster.sh sets these to run three brokers.
#   KAFKA_OPTS              extra JVM options
#   KAFKA_START_TIMEOUT     readiness wait in seconds (default 90)
#   KAFKA_STOP_TIMEOUT      graceful stop wait in seconds (default 30)
#   JAVA                    java binary (default $JAVA_HOME/bin/java, else java); needs Java 17+
#
# Files in $TXPIPE_CACHE_DIR/kafka: libs/ (jars), config/, data/ (log.dirs),
# logs/server.log (broker log, INFO), logs/kafka.out (JVM stdout/stderr),
# logs/kafkaServer-gc.log (the JVM's collections and their pauses, as
# Kafka's own kafka-run-class.sh keeps them: a latency spike on the topics
# can be matched against them; the JVM keeps at most ten files of 20 MB,
# numbering the older ones .0 to .9 in turn, so the highest number is not
# always the last run's), kafka.pid.
# The previous run's server.log and kafka.out are kept as *.1.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log_prefix=kafka

KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
# A SASL_SSL listener (SCRAM-SHA-512 over TLS with the broker's own CA);
# empty turns it off (scripts/kafka-cluster.sh does).
KAFKA_SASL_PORT="${KAFKA_SASL_PORT-9094}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1G}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

KDIR="${KAFKA_DIR:-$TXPIPE_CACHE_DIR/kafka}"
KAFKA_NODE_ID="${KAFKA_NODE_ID:-1}"
KAFKA_VOTERS="${KAFKA_VOTERS:-${KAFKA_NODE_ID}@${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}}"
KAFKA_REPLICATION="${KAFKA_REPLICATION:-1}"
KAFKA_MIN_ISR="${KAFKA_MIN_ISR:-1}"
# The jars are shared by every broker on the machine.
LIBS="$TXPIPE_CACHE_DIR/kafka/libs"
CONF="$KDIR/config"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
POM="$TXPIPE_SCRIPTS_DIR/kafka/pom.xml"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
STARTED_MSG="Kafka Server started"

if [[ -n "${JAVA:-}" ]]; then :
elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"
else JAVA=java
fi

# --- helpers -----------------------------------------------------------------

# pid of our broker if it is alive, else empty (and a stale pid file is removed).
broker_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 0
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
    echo "$pid"
  else
    rm -f "$PIDFILE"
  fi
}

is_ready() {
  port_open "$KAFKA_HOST" "$KAFKA_PORT" && grep -qF "$STARTED_MSG" "$LOGS/server.log" 2>/dev/null
}

show_tail() {
  local f
  for f in "$LOGS/server.log" "$LOGS/kafka.out"; do
    [[ -s "$f" ]] || continue
    echo "----- last 40 lines of $f -----" >&2
    tail -n 40 "$f" >&2
  done
}

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (need Java 17+; set JAVA or JAVA_HOME)"
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ "$v" =~ ^[0-9]+$ && "$v" -ge 17 ]] || die "Kafka 4.x needs Java 17+, $JAVA is version '${v:-unknown}'"
}

# Copy the runtime jars into $LIBS when missing or when the pom changed.
ensure_libs() {
  local want have=""
  want="$( { cat "$POM"; echo "$DEP_PLUGIN"; } | sha256sum | cut -d' ' -f1)"
  [[ -f "$LIBS/.stamp" ]] && have="$(cat "$LIBS/.stamp")"
  if [[ "$want" == "$have" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install -y maven)"
  log "resolving Kafka jars with Maven (scripts/kafka/pom.xml) ..."
  local t0 tmp out
  t0=$(now_ms)
  mkdir -p "$(dirname "$LIBS")"
  tmp="$LIBS.tmp"
  rm -rf "$tmp"
  if ! out="$(mvn -B -q -f "$POM" "$DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "mvn copy-dependencies failed"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar after copy-dependencies"
  echo "$want" >"$tmp/.stamp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  log "jars ready in $LIBS ($(find "$LIBS" -name '*.jar' | wc -l) jars, $(( ($(now_ms) - t0) / 1000 )) s)"
}

# ensure_tls: a CA and a broker certificate (PEM, key in PKCS#8) for the
# SASL_SSL listener, made once with openssl; the CA's key is thrown away.
ensure_tls() {
  [[ -n "$KAFKA_SASL_PORT" ]] || return 0
  local d="$KDIR/tls"
  if [[ ! -f "$d/broker.pem" || ! -f "$d/ca.crt" ]]; then
    command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install -y openssl)"
    log "making a CA and a broker certificate for the SASL_SSL listener"
    mkdir -p "$d"
    local t
    t="$(mktemp -d)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=txpipe dev Kafka CA" \
      -keyout "$t/ca.key" -out "$t/ca.crt" >/dev/null 2>&1 || die "openssl: CA"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$t/broker.key" >/dev/null 2>&1 || die "openssl: key"
    openssl req -new -key "$t/broker.key" -subj "/CN=127.0.0.1" -out "$t/broker.csr" >/dev/null 2>&1 || die "openssl: csr"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$t/ext"
    openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -days 3650 \
      -extfile "$t/ext" -out "$t/broker.crt" >/dev/null 2>&1 || die "openssl: sign"
    cat "$t/broker.key" "$t/broker.crt" >"$d/broker.pem"
    chmod 600 "$d/broker.pem"
    cp "$t/ca.crt" "$d/ca.crt"
    rm -rf "$t"
  fi
  cp "$d/ca.crt" "$TXPIPE_CACHE_DIR/kafka-ca.crt"
}

# sasl_config: the SASL_SSL listener's part of server.properties. SASL users
# are authorized by ACLs (StandardAuthorizer; `txpipe kafka-acls` grants the
# roles theirs) and get nothing else. The PLAINTEXT and CONTROLLER listeners
# are this development broker's local ports: their clients are ANONYMOUS,
# made a super user so the tests and tools keep working there. A production
# cluster closes plaintext instead (docs/security.md).
sasl_config() {
  [[ -n "$KAFKA_SASL_PORT" ]] || return 0
  cat <<EOF
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=${KDIR}/tls/broker.pem
EOF
}

write_configs() {
  mkdir -p "$CONF" "$DATA" "$LOGS"
  ensure_tls
  local listeners="PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}"
  local advertised="PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT}"
  if [[ -n "$KAFKA_SASL_PORT" ]]; then
    listeners+=",SASL_SSL://${KAFKA_HOST}:${KAFKA_SASL_PORT}"
    advertised+=",SASL_SSL://${KAFKA_HOST}:${KAFKA_SASL_PORT}"
  fi
  cat >"$CONF/server.properties.tmp" <<EOF
# Generated by scripts/kafka.sh -- edits are overwritten on every start.
process.roles=broker,controller
node.id=${KAFKA_NODE_ID}
controller.quorum.voters=${KAFKA_VOTERS}
listeners=${listeners}
advertised.listeners=${advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=${DATA}

num.partitions=1
default.replication.factor=${KAFKA_REPLICATION}
min.insync.replicas=${KAFKA_MIN_ISR}
auto.create.topics.enable=false
delete.topic.enable=true

offsets.topic.replication.factor=${KAFKA_REPLICATION}
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=${KAFKA_REPLICATION}
transaction.state.log.min.isr=${KAFKA_MIN_ISR}
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=${KAFKA_REPLICATION}
share.coordinator.state.topic.min.isr=${KAFKA_MIN_ISR}
share.coordinator.state.topic.num.partitions=1

group.initial.rebalance.delay.ms=0
EOF
  sasl_config >>"$CONF/server.properties.tmp"
  mv "$CONF/server.properties.tmp" "$CONF/server.properties"

  cat >"$CONF/log4j2.properties" <<'EOF'
# Generated by scripts/kafka.sh. Broker: INFO to ${kafka.logs.dir}/server.log, WARN+ to stdout (kafka.out).
status = warn
name = txpipe-kafka

appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n

appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
appender.out.filter.threshold.type = ThresholdFilter
appender.out.filter.threshold.level = warn

rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
rootLogger.appenderRef.out.ref = STDOUT

logger.request.name = kafka.request.logger
logger.request.level = warn
EOF

  cat >"$CONF/tools-log4j2.properties" <<'EOF'
# Generated by scripts/kafka.sh. Command-line tools: WARN+ to stderr.
status = warn
name = txpipe-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding,
# never starting with '-'. Generated here to save a JVM start.
random_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && break
  done
  echo "$id"
}

format_storage() {
  [[ -f "$DATA/meta.properties" ]] && return 0
  local id out
  id="${KAFKA_CLUSTER_ID:-$(random_cluster_id)}"
  log "formatting KRaft storage in $DATA (cluster id $id)"
  if ! out="$("$JAVA" -Xmx256M -Dkafka.logs.dir="$LOGS" \
        -Dlog4j2.configurationFile="$CONF/tools-log4j2.properties" \
        -cp "$LIBS/*" kafka.tools.StorageTool format \
        -t "$id" -c "$CONF/server.properties" --ignore-formatted 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "kafka.tools.StorageTool format failed"
  fi
  [[ -f "$DATA/meta.properties" ]] || { printf '%s\n' "$out" >&2; die "format did not write $DATA/meta.properties"; }
}

wait_ready() {
  local pid="$1" t0 deadline
  t0=$(now_ms)
  deadline=$(( t0 + KAFKA_START_TIMEOUT * 1000 ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      show_tail
      die "broker process $pid exited during startup (logs: $LOGS)"
    fi
    if is_ready; then
      log "ready on ${KAFKA_HOST}:${KAFKA_PORT} (pid $pid, waited $(( ($(now_ms) - t0) / 1000 )) s)"
      return 0
    fi
    if (( $(now_ms) > deadline )); then
      show_tail
      die "broker (pid $pid) not ready on ${KAFKA_HOST}:${KAFKA_PORT} after ${KAFKA_START_TIMEOUT} s (logs: $LOGS); it is left running, stop it with: $0 stop"
    fi
    sleep 0.25
  done
}

# --- commands ----------------------------------------------------------------

cmd_start() {
  mkdir -p "$KDIR"
  local pid
  pid="$(broker_pid)"
  if [[ -n "$pid" ]] && is_ready; then
    log "already running (pid $pid) on ${KAFKA_HOST}:${KAFKA_PORT}"
    return 0
  fi

  exec 9>"$KDIR/.lock"
  flock -w 300 9 || die "could not lock $KDIR/.lock"

  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    log "already starting (pid $pid), waiting for it"
    wait_ready "$pid"
    return 0
  fi
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    die "${KAFKA_HOST}:${KAFKA_PORT} is already in use by a process not started from $KDIR (set KAFKA_PORT or stop it)"
  fi
  if port_open "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"; then
    die "controller port ${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT} is already in use (set KAFKA_CONTROLLER_PORT or stop it)"
  fi

  check_java
  ensure_libs
  write_configs
  format_storage

  # Keep the previous run's logs as *.1; the readiness check greps a fresh server.log.
  local f
  for f in server.log kafka.out; do
    [[ -f "$LOGS/$f" ]] && mv -f "$LOGS/$f" "$LOGS/$f.1"
  done

  log "starting broker (PLAINTEXT ${KAFKA_HOST}:${KAFKA_PORT}, CONTROLLER ${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT})"
  rm -f "$PIDFILE"
  # setsid: own session, survives the calling shell; the inner bash writes its own
  # pid, closes inherited fds (incl. the lock, fd 9) and execs java, so the pid file
  # holds the JVM's pid.
  # shellcheck disable=SC2086,SC2016
  setsid bash -c 'echo $$ >"$1"; shift; '"$TXPIPE_CLOSE_FDS"'; exec "$@"' _ "$PIDFILE" \
    "$JAVA" $KAFKA_HEAP_OPTS \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    "-Xlog:gc*:file=$LOGS/kafkaServer-gc.log:time,uptime,level,tags:filecount=10,filesize=20M" \
    ${KAFKA_OPTS:-} \
    -cp "$LIBS/*" kafka.Kafka "$CONF/server.properties" \
    </dev/null >>"$LOGS/kafka.out" 2>&1 9>&- &

  local i
  for i in $(seq 1 40); do
    [[ -s "$PIDFILE" ]] && break
    sleep 0.05
  done
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || die "broker did not start (no pid file); see $LOGS/kafka.out"
  wait_ready "$pid"
}

cmd_stop() {
  local pid t0
  pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    log "not running"
    return 0
  fi
  log "stopping broker (pid $pid)"
  t0=$(now_ms)
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(now_ms) - t0 > KAFKA_STOP_TIMEOUT * 1000 )); then
      log "still running after ${KAFKA_STOP_TIMEOUT} s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
  log "stopped ($(( ($(now_ms) - t0) / 1000 )) s)"
}

cmd_status() {
  local pid
  pid="$(broker_pid)"
  if [[ -n "$pid" ]] && is_ready; then
    log "running (pid $pid) on ${KAFKA_HOST}:${KAFKA_PORT}"
    return 0
  elif [[ -n "$pid" ]]; then
    log "process $pid alive but not ready on ${KAFKA_HOST}:${KAFKA_PORT}"
    return 3
  fi
  log "not running"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  libs) check_java; ensure_libs ;;
  *) echo "usage: $0 start|stop|restart|status|libs" >&2; exit 2 ;;
esac
