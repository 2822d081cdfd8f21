# The lab's role "db": a placeholder that Puppet can apply without a package mirror.
file { '/etc/motd':
  ensure  => file,
  content => "${facts['networking']['hostname']}: role db, configured by Puppet\n",
}
