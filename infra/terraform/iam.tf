# The pipeline's Google identity: flow-run Jobs and Dask workers run as the Kubernetes service
# account wvm/wvm-flows (infra/k8s/base/serviceaccount.yaml), which Workload Identity maps to
# this account. It may read the datasets and read/write/delete objects in the labels bucket
# (leases are renewed and removed, manifests replaced) and nothing else. Triton, the Dask
# scheduler and the Prefect worker have no Google identity.
resource "google_service_account" "flows" {
  account_id   = "wvm-flows"
  display_name = "wvm pipeline (Kubernetes ${var.k8s_namespace}/wvm-flows)"
}

resource "google_storage_bucket_iam_member" "flows_read_datasets" {
  bucket = google_storage_bucket.datasets.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.flows.member
}

resource "google_storage_bucket_iam_member" "flows_write_labels" {
  bucket = google_storage_bucket.labels.name
  role   = "roles/storage.objectUser"
  member = google_service_account.flows.member
}

resource "google_service_account_iam_member" "flows_workload_identity" {
  service_account_id = google_service_account.flows.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.k8s_namespace}/wvm-flows]"
}

# The GPU nodes' own identity: write logs and metrics, pull the images, nothing more (the
# default compute account has Editor on the project).
resource "google_service_account" "gpu_nodes" {
  account_id   = "wvm-gpu-nodes"
  display_name = "wvm GPU node pool"
}

resource "google_project_iam_member" "gpu_nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])
  project = var.project_id
  role    = each.value
  member  = google_service_account.gpu_nodes.member
}

resource "google_artifact_registry_repository_iam_member" "gpu_nodes_pull" {
  location   = google_artifact_registry_repository.wvm.location
  repository = google_artifact_registry_repository.wvm.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.gpu_nodes.member
}
