variable "project_id" {
  description = "GCP project that holds the GKE cluster, the buckets and the registry."
  type        = string
}

variable "region" {
  description = "Region of the buckets, the registry and the cluster."
  type        = string
  default     = "us-central1"
}

variable "cluster_name" {
  description = "Existing GKE cluster (Workload Identity and network policy enforcement enabled) that gets the GPU node pool."
  type        = string
}

variable "cluster_location" {
  description = "Location (region or zone) of the GKE cluster."
  type        = string
}

variable "gpu_node_locations" {
  description = "Zones of the GPU node pool: zones of the cluster's region that offer NVIDIA L4."
  type        = list(string)
}

variable "datasets_bucket" {
  description = "Bucket of the robot datasets that wvm reads (created here; the pipeline only reads it)."
  type        = string
}

variable "labels_bucket" {
  description = "Bucket wvm writes episode stores and labels to (the nightly flow's `out`)."
  type        = string
}

variable "access_logs_bucket" {
  description = "Bucket that receives the access logs of the two buckets above."
  type        = string
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts the buckets and the registry; the GCS and Artifact Registry service agents need roles/cloudkms.cryptoKeyEncrypterDecrypter on it."
  type        = string
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU nodes (one NVIDIA L4 each)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU node pool's autoscaler (per zone); Triton runs 2 replicas."
  type        = number
  default     = 2
}

variable "k8s_namespace" {
  description = "Kubernetes namespace of infra/k8s."
  type        = string
  default     = "wvm"
}
