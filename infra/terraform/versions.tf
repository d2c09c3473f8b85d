# What infra/README.md used to ask operators to create by hand: the GCS buckets, the Google
# service account of the pipeline (least privilege, bound to the Kubernetes service account
# wvm/wvm-flows by Workload Identity), the GPU node pool for Triton, and the image registry.
#
#   terraform init && terraform plan -var-file=wvm.tfvars && terraform apply -var-file=wvm.tfvars
#
# The GKE cluster itself (Workload Identity and network policy enforcement on) is the operator's.
terraform {
  required_version = ">= 1.6"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
