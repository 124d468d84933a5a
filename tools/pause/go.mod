module example.invalid/xqueue-k8s/pause

go 1.22
