#!/usr/bin/env bash
# Run a real single-node Apache Kafka 4.x broker (KRaft, combined
# broker+controller) on loopback, without Docker, for tests and CI.
#
#   scripts/kafka.sh start          # fetch jars (first time), fresh data, wait until ready
#   scripts/kafka.sh restart        # stop it and start it again, same ports, data kept
#   scripts/kafka.sh stop           # stop the broker this script started
#   scripts/kafka.sh status         # exit 0 if running, 1 if not
#   scripts/kafka.sh logs [-f] [-n N]
#   scripts/kafka.sh topics ARGS... # org.apache.kafka.tools.TopicCommand against the broker
#   scripts/kafka.sh fetch          # only download the jars into the cache
#
# `start` and `restart` print the bootstrap address (127.0.0.1:PORT) on
# stdout, everything else goes to stderr, so `KAFKA_BROKERS=$(scripts/kafka.sh
# start)` works.
#
# Jars come from Maven Central through scripts/kafka/pom.xml and are cached in
# $KAFKA_HOME_DIR/lib (default: <repo>/.kafka, git-ignored); once the stamp file
# names the wanted version, no network is used. The data dir is wiped on every
# start, so each start gives an empty cluster. `restart` keeps it: it stops
# the broker in the pid file (if any), and starts it again on the ports of the
# last start, on the same storage (formatted only if it is not yet), so
# topics, messages and committed offsets survive; it waits until ready as
# `start` does.
#
# Environment (all optional):
#   KAFKA_HOME_DIR         cache/state folder (default <repo>/.kafka; relative = to the repo root)
#   KAFKA_VERSION          org.apache.kafka:kafka_2.13 version (default 4.3.1, pinned in the pom)
#   KAFKA_PORT             PLAINTEXT listener port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port on 127.0.0.1 (default 9093)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 120)
#   KAFKA_STOP_TIMEOUT     seconds between SIGTERM and SIGKILL (default 20)
#   KAFKA_HEAP_OPTS        default "-Xms256m -Xmx768m"
#   KAFKA_JVM_OPTS         default "-XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true"
#   KAFKA_LOG_LEVEL        root log4j level (default INFO)
#   KAFKA_EXTRA_PROPS      extra server.properties lines (newline separated key=value), appended last
#   KAFKA_MVN_ARGS         extra arguments for mvn (e.g. "-o" or "-s settings.xml")
#   JAVA_HOME              java to use (default: java on PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

HOME_DIR="${KAFKA_HOME_DIR:-.kafka}"
case "$HOME_DIR" in
  /*) ;;
  *) HOME_DIR="$REPO_ROOT/$HOME_DIR" ;;
esac

KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-20}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"
LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
# Fixed KRaft cluster id (22 chars, base64 UUID): a restart finds the same one in the data dir.
CLUSTER_ID="bXVsdGljb25zdW1lcnRzdA"

LIB_DIR="$HOME_DIR/lib"
STAMP="$LIB_DIR/.complete"
DATA_DIR="$HOME_DIR/data"
CONF="$HOME_DIR/server.properties"
LOG4J_CONF="$HOME_DIR/log4j2.properties"
LOG_FILE="$HOME_DIR/kafka.log"
PID_FILE="$HOME_DIR/kafka.pid"
LOCK_FILE="$HOME_DIR/.lock"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="java"
fi

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# Serialise start/restart/stop across concurrent invocations.
take_lock() {
  mkdir -p "$HOME_DIR"
  exec 9>"$LOCK_FILE"
  flock -w 180 9 || die "another kafka.sh start/stop holds $LOCK_FILE for too long"
}

# ---------------------------------------------------------------- jars

fetch_jars() {
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KAFKA_VERSION" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found; it is needed once to fetch the Kafka jars"
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR ..."
  local tmp="$HOME_DIR/lib.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # shellcheck disable=SC2086
  if ! mvn -q -B -f "$POM" ${KAFKA_MVN_ARGS:-} \
      -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies \
      -DincludeScope=runtime \
      -DoutputDirectory="$tmp" >"$HOME_DIR/mvn.log" 2>&1; then
    tail -n 50 "$HOME_DIR/mvn.log" >&2 || true
    die "mvn could not fetch the Kafka jars (full output: $HOME_DIR/mvn.log)"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
    || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn (see $HOME_DIR/mvn.log)"
  echo "$KAFKA_VERSION" >"$tmp/.complete"
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

# ---------------------------------------------------------------- process

# Prints the pid if the pid file names a live broker started by this script.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: it must be our kafka.Kafka with our config file.
  local cmd
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *kafka.Kafka*"$CONF"* ]] || return 1
  echo "$pid"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A real Kafka Metadata request (v1, no topics) over bash's /dev/tcp.
# Succeeds when the broker answers with our correlation id and >= 1 live broker.
metadata_ready() {
  local out
  out="$(timeout 5 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      # size=19 | api_key=3 (Metadata) | version=1 | correlation_id=7 | client_id="probe" | topics=[]
      printf "\x00\x00\x00\x13\x00\x03\x00\x01\x00\x00\x00\x07\x00\x05probe\x00\x00\x00\x00" >&3
      head -c 12 <&3 | od -An -tu1 -v
    ' _ "$PORT" 2>/dev/null)" || return 1
  # shellcheck disable=SC2206
  local b=($out)
  [[ ${#b[@]} -eq 12 ]] || return 1
  # bytes 4..7: correlation id, bytes 8..11: number of brokers in the response
  [[ "${b[4]} ${b[5]} ${b[6]} ${b[7]}" == "0 0 0 7" ]] || return 1
  local brokers=$(( (b[8] << 24) | (b[9] << 16) | (b[10] << 8) | b[11] ))
  (( brokers >= 1 ))
}

write_config() {
  cat >"$CONF" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Share groups (KIP-932, on by default since 4.2): short heartbeats, so
# that a member gets its assignment within a second, and a floor for the
# acquisition lock low enough that a test may set a group's lock to 1s
# (share.record.lock.duration.ms); the default lock stays 30s.
group.share.heartbeat.interval.ms=500
group.share.min.heartbeat.interval.ms=100
group.share.min.record.lock.duration.ms=1000
# KIP-848 consumer groups: the same short heartbeats, and a 6s session
# (the classic tests' SessionTimeout), so that a killed member's partitions
# move soon.
group.consumer.heartbeat.interval.ms=500
group.consumer.min.heartbeat.interval.ms=100
group.consumer.session.timeout.ms=6000
group.consumer.min.session.timeout.ms=6000
EOF
  if [[ -n "${KAFKA_EXTRA_PROPS:-}" ]]; then
    printf '%s\n' "$KAFKA_EXTRA_PROPS" >>"$CONF"
  fi

  cat >"$LOG4J_CONF" <<EOF
# Generated by scripts/kafka.sh: everything to stdout, which goes to kafka.log.
status = warn
name = kafka-test-broker
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $LOG_LEVEL
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

java_cmd() {
  # shellcheck disable=SC2086
  "$JAVA" $HEAP_OPTS $JVM_OPTS \
    -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -Dkafka.logs.dir="$HOME_DIR" \
    -cp "$LIB_DIR/*" "$@"
}

cmd_start() {
  take_lock
  local pid
  if pid="$(running_pid)"; then
    local want="$PORT"
    PORT=""
    KAFKA_PORT="" use_started_port
    if [[ -n "${KAFKA_PORT:-}" && "$want" != "$PORT" ]]; then
      die "already running (pid $pid) on 127.0.0.1:$PORT, not on $want; run '$0 stop' first"
    fi
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    echo "127.0.0.1:$PORT"
    return 0
  fi
  rm -f "$PID_FILE"
  launch fresh
}

# Stops the broker in the pid file, if any, and starts it again on the ports
# of the last start (those in $CONF), without wiping the data dir.
cmd_restart() {
  take_lock
  if [[ -f "$CONF" ]]; then
    local p c
    p="$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9][0-9]*\)$|\1|p' "$CONF")"
    c="$(sed -n 's|^controller.quorum.voters=1@127.0.0.1:\([0-9][0-9]*\)$|\1|p' "$CONF")"
    [[ -n "$p" && -n "$c" ]] || die "cannot read the ports of the last start from $CONF"
    if [[ -n "${KAFKA_PORT:-}" && "$KAFKA_PORT" != "$p" ]] \
        || [[ -n "${KAFKA_CONTROLLER_PORT:-}" && "$KAFKA_CONTROLLER_PORT" != "$c" ]]; then
      die "the last start used ports $p/$c, not ${KAFKA_PORT:-$p}/${KAFKA_CONTROLLER_PORT:-$c}; restart keeps the ports (use stop and start to change them)"
    fi
    PORT="$p" CONTROLLER_PORT="$c"
  fi
  local pid
  if pid="$(running_pid)"; then
    log "restarting pid $pid on 127.0.0.1:$PORT, keeping $DATA_DIR ..."
    local t0=$SECONDS
    stop_pid "$pid"
    log "stopped pid $pid ($((SECONDS - t0))s)"
  else
    log "not running; starting on 127.0.0.1:$PORT, keeping $DATA_DIR"
  fi
  rm -f "$PID_FILE"
  launch keep
}

# launch fresh|keep: starts the broker (fresh: on an emptied data dir; keep:
# on the data dir as it is, formatted only if it is not yet), writes the pid
# file, waits until the broker answers metadata requests, and prints the
# bootstrap address.
launch() {
  local mode=$1 pid
  command -v "$JAVA" >/dev/null || die "java not found (install a JDK 17+ or set JAVA_HOME)"
  local t0=$SECONDS
  fetch_jars

  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_open "$p" && die "127.0.0.1:$p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
  done

  if [[ "$mode" == fresh ]]; then
    rm -rf "$DATA_DIR"
  fi
  mkdir -p "$DATA_DIR"
  write_config
  if [[ "$mode" == fresh ]]; then
    if [[ -f "$LOG_FILE" ]]; then mv -f "$LOG_FILE" "$LOG_FILE.prev"; fi
  else
    # One log across restarts: what happened before is often the point.
    echo "[$(date '+%Y-%m-%d %H:%M:%S,%3N')] kafka.sh: restart, data dir kept" >>"$LOG_FILE"
  fi

  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "storage in $DATA_DIR already formatted, keeping it"
  # Format KRaft storage (static quorum, fixed cluster id). Small, fast-starting JVM.
  elif ! HEAP_OPTS="-Xmx256m" JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1" \
      java_cmd kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$CONF" >>"$LOG_FILE" 2>&1; then
    tail -n 50 "$LOG_FILE" >&2 || true
    die "formatting KRaft storage failed"
  fi

  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (controller 127.0.0.1:$CONTROLLER_PORT), log: $LOG_FILE"
  # New session (setsid) so it survives the calling shell and gets no terminal signals.
  setsid nohup "$JAVA" $HEAP_OPTS $JVM_OPTS \
    -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -Dkafka.logs.dir="$HOME_DIR" \
    -cp "$LIB_DIR/*" kafka.Kafka "$CONF" >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      log "broker process $pid exited during startup; last 50 log lines:"
      tail -n 50 "$LOG_FILE" >&2 || true
      exit 1
    fi
    if metadata_ready; then
      break
    fi
    if ((SECONDS >= deadline)); then
      log "broker not ready after ${START_TIMEOUT}s; stopping it. Last 50 log lines:"
      tail -n 50 "$LOG_FILE" >&2 || true
      stop_pid "$pid"
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 0.3
  done
  log "ready on 127.0.0.1:$PORT (pid $pid, $((SECONDS - t0))s)"
  echo "127.0.0.1:$PORT"
}

# SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL; returns once the pid is gone.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid $pid still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      break
    fi
    sleep 0.2
  done
}

cmd_stop() {
  take_lock
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping pid $pid ..."
  stop_pid "$pid"
  rm -f "$PID_FILE"
  log "stopped"
}

# For status/topics: without KAFKA_PORT, talk to the port the last start used.
use_started_port() {
  if [[ -z "${KAFKA_PORT:-}" && -f "$CONF" ]]; then
    local p
    p="$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9][0-9]*\)$|\1|p' "$CONF")"
    if [[ -n "$p" ]]; then PORT="$p"; fi
  fi
}

cmd_status() {
  use_started_port
  local pid
  if pid="$(running_pid)"; then
    if metadata_ready; then
      echo "running (pid $pid) on 127.0.0.1:$PORT"
    else
      echo "running (pid $pid) on 127.0.0.1:$PORT, not answering metadata requests (yet)"
    fi
    return 0
  fi
  echo "not running"
  return 1
}

cmd_logs() {
  local follow=0 n=50
  while (($#)); do
    case "$1" in
      -f|--follow) follow=1 ;;
      -n) shift; n="${1:?-n needs a number}" ;;
      *) die "logs: unknown option $1" ;;
    esac
    shift
  done
  [[ -f "$LOG_FILE" ]] || die "no log file yet ($LOG_FILE)"
  if ((follow)); then
    exec tail -n "$n" -F "$LOG_FILE"
  fi
  tail -n "$n" "$LOG_FILE"
}

cmd_topics() {
  [[ -f "$STAMP" ]] || die "jars not fetched yet; run: $0 start"
  use_started_port
  HEAP_OPTS="-Xmx256m" JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1" \
    java_cmd_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$PORT" "$@"
}

# CLI tools: their own log output (WARN and up) goes to stderr, results to stdout.
java_cmd_tool() {
  local conf="$HOME_DIR/log4j2-tools.properties"
  printf '%s\n' \
    'status = warn' \
    'appender.err.type = Console' \
    'appender.err.name = STDERR' \
    'appender.err.target = SYSTEM_ERR' \
    'appender.err.layout.type = PatternLayout' \
    'appender.err.layout.pattern = [%d] %p %m (%c)%n' \
    'rootLogger.level = WARN' \
    'rootLogger.appenderRef.err.ref = STDERR' >"$conf"
  # shellcheck disable=SC2086
  "$JAVA" $HEAP_OPTS $JVM_OPTS -Dlog4j2.configurationFile="$conf" \
    -cp "$LIB_DIR/*" "$@"
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    start) cmd_start ;;
    restart) cmd_restart ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    topics) cmd_topics "$@" ;;
    fetch) take_lock; fetch_jars; log "jars ready in $LIB_DIR" ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
