# The registry the two images are pushed to (infra/docker; names in infra/k8s/base/kustomization.yaml):
#   REGISTRY=<region>-docker.pkg.dev/<project>/wvm
resource "google_artifact_registry_repository" "wvm" {
  repository_id = "wvm"
  location      = var.region
  format        = "DOCKER"
  description   = "wvm pipeline and Triton images"
  kms_key_name  = var.kms_key_name
  docker_config {
    immutable_tags = true
  }
}
