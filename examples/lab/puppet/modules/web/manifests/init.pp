# A web server: nginx serving a page that says which host answered and that Puppet made it.
class web {
  package { 'nginx-light':
    ensure => installed,
  }

  file { '/var/www/html/index.html':
    ensure  => file,
    content => "${facts['networking']['hostname']}: role web, configured by Puppet\n",
    require => Package['nginx-light'],
    notify  => Service['nginx'],
  }

  service { 'nginx':
    ensure  => running,
    enable  => true,
    require => Package['nginx-light'],
  }
}
