// Types for leaderworkerset.x-k8s.io/v1 LeaderWorkerSet (the fields of the LWS v1 API that a
// manifest sets), written against kubernetes-types so the pod templates are checked in full.
import { ObjectMeta } from "kubernetes-types/meta/v1";
import { PodTemplateSpec } from "kubernetes-types/core/v1";

type IntOrString = number | string;

export interface RollingUpdateConfiguration {
  partition?: number;
  maxUnavailable?: IntOrString;
  maxSurge?: IntOrString;
}

export interface RolloutStrategy {
  type: "RollingUpdate";
  rollingUpdateConfiguration?: RollingUpdateConfiguration;
}

export interface SubGroupPolicy {
  subGroupSize?: number;
}

export interface LeaderWorkerTemplate {
  leaderTemplate?: PodTemplateSpec;
  workerTemplate: PodTemplateSpec;
  size?: number;
  restartPolicy?: "RecreateGroupOnPodRestart" | "RecreateGroupAfterStart" | "None";
  subGroupPolicy?: SubGroupPolicy;
}

export interface NetworkConfig {
  subdomainPolicy?: "Shared" | "UniquePerReplica";
}

export interface LeaderWorkerSetSpec {
  replicas?: number;
  leaderWorkerTemplate: LeaderWorkerTemplate;
  rolloutStrategy?: RolloutStrategy;
  startupPolicy?: "LeaderCreated" | "LeaderReady";
  networkConfig?: NetworkConfig;
}

export interface LeaderWorkerSet {
  apiVersion?: "leaderworkerset.x-k8s.io/v1";
  kind?: "LeaderWorkerSet";
  metadata?: ObjectMeta;
  spec?: LeaderWorkerSetSpec;
}
