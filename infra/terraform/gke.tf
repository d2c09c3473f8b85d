# The GPU node pool Triton runs on (infra/k8s/overlays/gpu selects it by
# cloud.google.com/gke-accelerator: nvidia-l4 and tolerates the nvidia.com/gpu taint GKE puts
# on GPU nodes). torch 2.13.0 in the Triton image is built for CUDA 13.0: the driver GKE
# installs must be R580 or newer (LATEST).
resource "google_container_node_pool" "gpu" {
  name           = "wvm-gpu-l4"
  cluster        = var.cluster_name
  location       = var.cluster_location
  node_locations = var.gpu_node_locations

  autoscaling {
    min_node_count = 0
    max_node_count = var.gpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.gpu_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.gpu_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels = {
      workload = "wvm-triton"
    }

    guest_accelerator {
      type  = "nvidia-l4"
      count = 1
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
