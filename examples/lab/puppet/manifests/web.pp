# The lab's role "web": what a web server is here. stemcell's installed systems apply this
# with `puppet apply` at every boot and every 30 minutes (stemcell-converge).
include web
