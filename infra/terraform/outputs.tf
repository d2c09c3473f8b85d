output "registry" {
  description = "REGISTRY for infra/README.md's docker build/push."
  value       = "${google_artifact_registry_repository.wvm.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.wvm.repository_id}"
}

output "flows_service_account" {
  description = "Value of the iam.gke.io/gcp-service-account annotation of wvm-flows (infra/k8s/base/serviceaccount.yaml)."
  value       = google_service_account.flows.email
}

output "labels_url" {
  description = "Where the nightly flow writes (prefect.yaml nightly-k8s `out`)."
  value       = "gs://${google_storage_bucket.labels.name}/wvm/nightly"
}

output "datasets_url" {
  description = "Where the robot datasets lie (prefect.yaml nightly-k8s `sources`)."
  value       = "gs://${google_storage_bucket.datasets.name}"
}
