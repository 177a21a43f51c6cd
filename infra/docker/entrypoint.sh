#!/usr/bin/env bash
# Container entry point.
#
# Spark on Kubernetes (spark-submit --master k8s://..., or the Spark Operator) starts the
# driver and executor pods of this image with the arguments `driver ...` / `executor`
# and configures them through SPARK_* environment variables; this translates those into
# the spark-submit (client mode, inside the driver pod) and executor-backend commands.
# Anything else runs as given, e.g. `python jobs/train.py ...` or the `ray start` commands
# KubeRay puts in the pod spec (a pod's `command` replaces this entry point anyway).
set -euo pipefail

spark_java_opts() {
  # SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...: one JVM option each, in index order.
  local i=0 name
  JAVA_OPTS=()
  while name="SPARK_JAVA_OPT_${i}" && [[ -n "${!name:-}" ]]; do
    JAVA_OPTS+=("${!name}")
    i=$((i + 1))
  done
}

case "${1:-}" in
  driver)
    shift
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    spark_java_opts
    exec "${JAVA_HOME}/bin/java" "${JAVA_OPTS[@]}" \
      "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}" \
      -cp "${SPARK_HOME}/jars/*${SPARK_CLASSPATH:+:${SPARK_CLASSPATH}}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
      --podName "${SPARK_EXECUTOR_POD_NAME}"
    ;;
  "")
    exec pipeline --help
    ;;
  *)
    exec "$@"
    ;;
esac
